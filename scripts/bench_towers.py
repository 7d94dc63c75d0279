#!/usr/bin/env python3
"""PyTorch eager's training pairs/s for the residual towers `cargo bench --bench train`
times: the small BatchNorm ResNet (width 16) on 1×28×28 and torchvision's resnet18 on
3×64×64, contrastive loss (margin 1, Euclidean) over both branches as one batch of 2B, Adam,
at batches of 64 and 128 pairs; 3 warm-up steps, 12 timed. Random pixels. One JSON line per
figure; run it in the same sitting as the bench and read the ratio.

    /tmp/torchenv/bin/python scripts/bench_towers.py [--threads 2] [--batches 64,128] [--device cuda]

On a GPU (`--device cuda`) every timed stretch ends with `torch.cuda.synchronize()`, so the
figure is the GPU's work, not the launch queue's.
"""
import argparse, json, os, sys, time
import torch, torchvision
sys.path.insert(0, os.path.dirname(__file__))
from towers_reference import resnet  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batches", default="64,128")
p.add_argument("--device", default="cpu")
a = p.parse_args()
dev = torch.device(a.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


torch.set_num_threads(a.threads)
torch.manual_seed(0)

towers = [("resnet-small", lambda: resnet(16), (1, 28, 28)),
          ("resnet18", lambda: torchvision.models.resnet18(num_classes=128), (3, 64, 64))]
for name, make, shape in towers:
    for b in map(int, a.batches.split(",")):
        net = make().to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.rand(2 * b, *shape, device=dev)
        same = (torch.arange(b, device=dev) % 2 == 0).float()

        def step():
            e = net(x)
            d = torch.sqrt(((e[:b] - e[b:]) ** 2).sum(1) + 1e-12)
            loss = (same * d ** 2 + (1 - same) * torch.clamp(1 - d, min=0) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for _ in range(3):
            step()
        sync()
        t = time.perf_counter()
        for _ in range(12):
            step()
        sync()
        rate = 12 * b / (time.perf_counter() - t)
        print(json.dumps(dict(kind="train", tower=name, batch=b, pairs_per_sec=round(rate, 2),
                              torch=torch.__version__, threads=a.threads,
                              device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name())))
