#!/usr/bin/env python3
"""torchvision's resnet18 through siamese-gpu: the same embeddings and the same gradients.

Builds torchvision.models.resnet18(num_classes=128) with non-trivial BatchNorm state (random
affine weights, running statistics from three training-mode batches), saves its state_dict
with safetensors, and checks two things against it:

1. Evaluation mode: `siamese embed --tower resnet18 --init-from WEIGHTS` on a folder of
   random RGB images gives the embeddings torchvision gives in eval() mode.
2. Training mode: one step of the contrastive loss (margin 1, Euclidean, mean over pairs)
   on a batch of pairs (`examples/tower_step.rs`) gives torchvision's weight gradients and
   leaves its running statistics.

Prints the largest differences and exits 1 if one is over its tolerance.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision safetensors
    cargo build --release --bin siamese --example tower_step
    /tmp/torchenv/bin/python scripts/check_torchvision.py [--size 64] [--images 12]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=64, help="image height and width")
p.add_argument("--images", type=int, default=12, help="test images to embed")
p.add_argument("--pairs", type=int, default=4, help="pairs in the training step")
p.add_argument("--bin", default=os.path.join(ROOT, "target/release"), help="where siamese and examples/tower_step are")
a = p.parse_args()
torch.manual_seed(0)
rng = np.random.default_rng(0)
tmp = tempfile.mkdtemp(prefix="siamese-torchvision-")
failures = []


def relative(ours, theirs):
    """The largest difference relative to the largest magnitude of PyTorch's values."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12)


def report(what, diff, tolerance):
    ok = diff <= tolerance
    print(f"  {what:<44} max |ours − torch| / max |torch| = {diff:.2e}  (tolerance {tolerance:.0e}) {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)


# A resnet18 whose BatchNorm layers are not at their defaults.
net = torchvision.models.resnet18(num_classes=128)
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    net.train()
    for _ in range(3):
        net(torch.rand(8, 3, a.size, a.size))
weights = os.path.join(tmp, "resnet18.safetensors")
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; weights in {weights}")

# 1. Evaluation mode, through `siamese embed` on an image folder.
data = os.path.join(tmp, "data")
pixels = {}
for split, count in (("train", 12), ("test", a.images)):
    for i in range(count):
        cls = "ab"[i % 2]
        os.makedirs(os.path.join(data, split, cls), exist_ok=True)
        img = rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8)
        name = f"{i:03d}.png"
        Image.fromarray(img).save(os.path.join(data, split, cls, name))
        if split == "test":
            pixels[(cls, name)] = img
out = os.path.join(tmp, "embeddings.npy")
cmd = [os.path.join(a.bin, "siamese"), "embed", "--tower", "resnet18", "--init-from", weights,
       "--data", data, "--split", "test", "--image-size", f"{a.size}x{a.size}", "--color", "rgb",
       "--out", out]
subprocess.run(cmd, check=True)
ours = np.load(out)
# The folder's order: round-robin over the sorted classes (the first image of each class,
# then the second of each, ...), file names sorted within a class.
by_class = {c: sorted(n for k, n in pixels if k == c) for c in sorted({k for k, _ in pixels})}
order = [(c, names[i]) for i in range(max(map(len, by_class.values())))
         for c, names in by_class.items() if i < len(names)]
x = torch.from_numpy(np.stack([pixels[k] for k in order])).permute(0, 3, 1, 2).float() / 255
net.eval()
with torch.no_grad():
    theirs = net(x).numpy()
print(f"evaluation mode, {len(order)} images {a.size}×{a.size} RGB, embeddings [{ours.shape[0]}, {ours.shape[1]}]:")
# 18 layers of f32 sums in another order: 1e-4 of the largest value is ~1000 ulps.
report("embeddings (eval mode, running statistics)", relative(ours, theirs), 1e-4)

# 2. Training mode: one contrastive step's gradients and running statistics.
train = torchvision.models.resnet18(num_classes=128)
train.load_state_dict(load_file(weights))
train.train()
b = a.pairs
images = torch.rand(2 * b, 3, a.size, a.size)
same = torch.tensor([float(i % 2 == 0) for i in range(b)])
e = train(images)
d = torch.sqrt(((e[:b] - e[b:]) ** 2).sum(1) + 1e-12)
loss = (same * d ** 2 + (1 - same) * torch.clamp(1.0 - d, min=0) ** 2).mean()
loss.backward()
step_in, step_out = os.path.join(tmp, "step_in.safetensors"), os.path.join(tmp, "step_out.safetensors")
save_file({"images": images.contiguous(), "same": same}, step_in)
subprocess.run([os.path.join(a.bin, "examples", "tower_step"), "resnet18", weights, step_in, step_out], check=True)
got = load_file(step_out)
with open(step_out, "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
print(f"training mode, {b} pairs: loss ours {float(header['__metadata__']['step_loss']):.6f}, torch {loss.item():.6f}")
report("loss", relative([float(header["__metadata__"]["step_loss"])], [loss.item()]), 1e-5)
# BatchNorm's backward over 8 images (32 values per channel in layer4) amplifies the
# reordering of sums: 1e-3 of each tensor's largest gradient.
named = list(train.named_parameters())
# fc.bias cancels in a distance between two embeddings, so its true gradient is 0 and
# PyTorch's is rounding noise: each tensor is read against its own largest gradient, or
# 1e-4 of the model's largest where that is smaller.
top = max(np.abs(p.grad.numpy()).max() for _, p in named)
worst = max((np.abs(got[f"tower.{n}"].numpy() - p.grad.numpy()).max()
             / max(np.abs(p.grad.numpy()).max(), 1e-4 * top), n) for n, p in named)
report(f"weight gradients, worst of {len(named)} tensors ({worst[1]})", worst[0], 1e-3)
stats = [(n, v) for n, v in train.state_dict().items() if "running" in n]
worst = max((relative(got[f"tower.{n}"].numpy(), v.numpy()), n) for n, v in stats)
report(f"running statistics after the step, worst ({worst[1]})", worst[0], 1e-4)
tracked = int(got["tower.bn1.num_batches_tracked"])
print(f"  num_batches_tracked ours {tracked}, torch {int(train.bn1.num_batches_tracked)}")
if tracked != int(train.bn1.num_batches_tracked):
    failures.append("num_batches_tracked")

if failures:
    print("FAILED: " + ", ".join(failures))
    sys.exit(1)
print("siamese-gpu's resnet18 matches torchvision's in evaluation and training mode")
