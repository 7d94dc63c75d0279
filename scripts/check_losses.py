#!/usr/bin/env python3
"""Every loss on class-labelled batches against pytorch-metric-learning, value and gradients.

Setup (once; PyTorch's CPU build is enough):

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy safetensors pytorch-metric-learning

Then:

    cargo run --release --example loss_gradients -- /tmp/losses.safetensors
    /tmp/torchenv/bin/python scripts/check_losses.py /tmp/losses.safetensors

The example writes seeded embeddings and labels (a P×K batch), each class head's weights,
and for each loss our GPU's value and gradients (the tape a training step records) and the
CPU reference's value. This script computes the same losses with pytorch-metric-learning on
the same embeddings, labels and weights, in float64, and prints the largest differences. It
exits non-zero if any exceeds its tolerance: 1e-4 relative on the loss, 1e-4 of the largest
gradient entry on each gradient (our values are f32: their rounding, and the GPU's exp and
log, are of order 1e-6 relative; a wrong term or factor is of order 1).

The class weights are ours [C·K, D] (a class's K sub-centers in consecutive rows);
pytorch-metric-learning holds them as W [D, C·K] with the same column order, so W = ours.T.
ArcFace's margin is 0.5 rad, pytorch-metric-learning's 28.6° default being that angle
rounded: it is given as degrees(0.5).
"""

import math
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors import safe_open
from pytorch_metric_learning import losses, miners

LOSS_TOL = 1e-4
GRAD_TOL = 1e-4


def pml_loss(name, classes, dim):
    """The pytorch-metric-learning loss (and miner) for one of our loss names."""
    if name == "arcface":
        return losses.ArcFaceLoss(classes, dim, margin=math.degrees(0.5), scale=64), None
    if name == "subcenter-arcface":
        return (
            losses.SubCenterArcFaceLoss(
                num_classes=classes, embedding_size=dim, margin=math.degrees(0.5), scale=64, sub_centers=3
            ),
            None,
        )
    if name == "cosface":
        return losses.CosFaceLoss(classes, dim, margin=0.35, scale=64), None
    if name == "proxy-anchor":
        return losses.ProxyAnchorLoss(classes, dim, margin=0.1, alpha=32), None
    if name == "supcon":
        return losses.SupConLoss(temperature=0.1), None
    if name == "ntxent":
        return losses.NTXentLoss(temperature=0.07), None
    if name == "multi-similarity":
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    raise SystemExit(f"unknown loss {name}")


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: check_losses.py LOSSES.safetensors")
    path = sys.argv[1]
    tensors = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    embeddings = tensors["embeddings"].astype(np.float64)
    labels = torch.from_numpy(tensors["labels"])
    classes = int(labels.max()) + 1
    dim = embeddings.shape[1]
    names = sorted({k.split(".")[0] for k in tensors if k.endswith(".grad_embeddings")})
    print(f"pytorch-metric-learning, float64; {embeddings.shape[0]} embeddings of {dim}, {classes} classes")
    print(f"{'loss':<18} {'ours (GPU)':>12} {'PML':>12} {'rel. diff':>10} {'CPU ref':>10} {'grad emb.':>10} {'grad W':>10}")
    failed = False
    for name in names:
        loss_fn, miner = pml_loss(name, classes, dim)
        loss_fn = loss_fn.double()
        weights = tensors.get(f"{name}.weights")
        if weights is not None:
            param = loss_fn.proxies if name == "proxy-anchor" else loss_fn.W
            with torch.no_grad():
                param.copy_(torch.from_numpy(weights if name == "proxy-anchor" else weights.T))
        e = torch.tensor(embeddings, requires_grad=True)
        if miner is not None:
            value = loss_fn(e, labels, miner(e, labels))
        else:
            value = loss_fn(e, labels)
        value.backward()
        ours = float(meta[f"{name}.loss"])
        cpu = float(meta[f"{name}.cpu_loss"])
        pml = float(value.detach())
        rel = abs(ours - pml) / max(abs(pml), 1e-12)
        cpu_rel = abs(cpu - pml) / max(abs(pml), 1e-12)

        def grad_diff(ours_grad, theirs):
            scale = max(np.abs(theirs).max(), 1e-12)
            return np.abs(ours_grad - theirs).max() / scale

        ge = grad_diff(tensors[f"{name}.grad_embeddings"], e.grad.numpy())
        gw = float("nan")
        if weights is not None:
            theirs = param.grad.numpy()
            if name != "proxy-anchor":
                theirs = theirs.T
            gw = grad_diff(tensors[f"{name}.grad_weights"], theirs)
        bad = rel > LOSS_TOL or cpu_rel > LOSS_TOL or ge > GRAD_TOL or gw > GRAD_TOL
        failed |= bad
        print(
            f"{name:<18} {ours:>12.6f} {pml:>12.6f} {rel:>10.2e} {cpu_rel:>10.2e} {ge:>10.2e} {gw:>10.2e}"
            + ("  <-- over tolerance" if bad else "")
        )
    print("grad columns: max |ours − PML| / max |PML| over the entries; rel. diff: |ours − PML| / |PML|")
    if failed:
        raise SystemExit("some loss differs from pytorch-metric-learning beyond its tolerance")
    print(f"all within tolerance (loss {LOSS_TOL:g} relative, gradients {GRAD_TOL:g} of the largest entry)")


if __name__ == "__main__":
    main()
