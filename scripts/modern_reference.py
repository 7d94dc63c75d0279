#!/usr/bin/env python3
"""What a modern tower and loss buy on Fashion-MNIST, measured with pytorch-metric-learning:
the reference LeNet tower or a small BatchNorm ResNet, trained with semi-hard triplet mining
or a loss on class-labelled batches (ArcFace, Sub-center ArcFace, CosFace, ProxyAnchor,
SupCon, NT-Xent, Multi-Similarity with its miner) on P x K batches (Adam + cosine schedule),
then scored with the project's
protocol: leave-one-out P@1 / R-precision / MAP@R on the test split (PML's
AccuracyCalculator) and verification accuracy at a validation-chosen threshold.

usage: modern_reference.py --tower lenet|resnet --loss semihard|contrastive|arcface|subcenter-arcface|
       cosface|proxy-anchor|supcon|ntxent|multi-similarity [--steps N] -> one JSON line
"""
import argparse, json, sys, time, os
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(__file__))
import pytorch_reference as ref
from towers_reference import resnet
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

p = argparse.ArgumentParser()
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--tower", default="resnet")
p.add_argument("--width", type=int, default=16)
p.add_argument("--loss", default="semihard")
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--k", type=int, default=16)
p.add_argument("--margin", type=float, default=0.2)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--augment", action="store_true")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)

x, y, xv, yv, xt, yt = ref.load(a.data)
by = [np.flatnonzero(y == c) for c in range(10)]
net = ref.tower() if a.tower == "lenet" else resnet(a.width)
flops = None
# The losses on class-labelled batches at pytorch-metric-learning's defaults (siamese-gpu's
# --loss names); the class heads' weights train with the network, at the same learning rate.
CLASS_LOSSES = {
    "arcface": lambda: (None, losses.ArcFaceLoss(num_classes=10, embedding_size=128)),
    "subcenter-arcface": lambda: (None, losses.SubCenterArcFaceLoss(num_classes=10, embedding_size=128)),
    "cosface": lambda: (None, losses.CosFaceLoss(num_classes=10, embedding_size=128)),
    "proxy-anchor": lambda: (None, losses.ProxyAnchorLoss(num_classes=10, embedding_size=128)),
    "supcon": lambda: (None, losses.SupConLoss()),
    "ntxent": lambda: (None, losses.NTXentLoss()),
    "multi-similarity": lambda: (miners.MultiSimilarityMiner(), losses.MultiSimilarityLoss()),
}
if a.loss == "semihard":
    miner = miners.TripletMarginMiner(margin=a.margin, type_of_triplets="semihard"); crit = losses.TripletMarginLoss(margin=a.margin)
elif a.loss in CLASS_LOSSES:
    miner, crit = CLASS_LOSSES[a.loss]()
else:
    miner = None; crit = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
params = list(net.parameters()) + list(crit.parameters())
opt = torch.optim.Adam(params, lr=a.lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
xs = torch.from_numpy(x).unsqueeze(1)
t0 = time.time(); net.train()
for s in range(a.steps):
    idx = np.concatenate([rng.choice(by[c], a.k, replace=False) for c in range(10)])
    lab = torch.from_numpy(y[idx]).long(); inp = xs[torch.from_numpy(idx)]
    if a.augment:
        dx, dy = rng.integers(-2, 3, 2); inp = torch.roll(inp, shifts=(int(dy), int(dx)), dims=(2, 3))
    e = net(inp)
    if a.loss not in CLASS_LOSSES: e = F.normalize(e, dim=1)
    loss = crit(e, lab, miner(e, lab)) if miner else crit(e, lab)
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if s % 500 == 0: print(f"step {s} loss {loss.item():.4f}", file=sys.stderr)
train_s = time.time() - t0
net.eval()
norm = lambda e: F.normalize(e, dim=1)
ev, et = norm(ref.embed_all(net, xv)), norm(ref.embed_all(net, xt))
ac = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu"))
r = ac.get_accuracy(et, torch.from_numpy(yt).long(), ref_includes_query=True)
erng = np.random.default_rng(1234)
byv = [np.flatnonzero(yv == c) for c in range(10)]; byt = [np.flatnonzero(yt == c) for c in range(10)]
va, vb, vs = ref.sample_pairs(erng, yv, byv, 10000); ta, tb, ts = ref.sample_pairs(erng, yt, byt, 10000)
thr = ref.best_threshold(ref.pair_dists(ev, va, vb), vs); dt = ref.pair_dists(et, ta, tb)
print(json.dumps(dict(tower=a.tower, width=a.width, loss=a.loss, augment=a.augment, steps=a.steps, batch=10 * a.k,
    params=sum(p.numel() for p in net.parameters()), p_at_1=r["precision_at_1"], r_precision=r["r_precision"], map_at_r=r["mean_average_precision_at_r"],
    verif_acc=float(((dt <= thr) == (ts > 0.5)).mean()), roc_auc=float(ref.roc_auc(dt[ts > 0.5], dt[ts < 0.5])), train_s=round(train_s, 1), torch=torch.__version__)))
