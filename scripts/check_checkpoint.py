#!/usr/bin/env python3
"""Loads a siamese-gpu checkpoint (RUN_DIR/model.safetensors) outside Rust and checks it.

Reads the file with the `safetensors` package, rebuilds from the tower spec in its metadata
the names and shapes PyTorch's nn.Sequential gives the same layers, and asserts the file
holds exactly those tensors. With PyTorch installed it also loads them into that
nn.Sequential with load_state_dict(strict=True) and embeds a blank image.

    python3 -m venv /tmp/stenv && /tmp/stenv/bin/pip install safetensors numpy
    /tmp/stenv/bin/python scripts/check_checkpoint.py RUN_DIR/model.safetensors
"""
import json
import sys

from safetensors import safe_open
from safetensors.numpy import load_file


def expected_tensors(spec, input_shape):
    """{name: shape} of the spec's parameters, named as nn.Sequential names them."""
    c, h, w = input_shape
    flat = None
    out = {}
    for i, layer in enumerate(part.split() for part in spec.split("|")):
        kind, args = layer[0], layer[1:]
        positional = [int(a) for a in args if "=" not in a]
        options = dict(a.split("=") for a in args if "=" in a)
        if kind == "conv":
            o, k = positional
            s, p = int(options.get("stride", 1)), int(options.get("pad", 0))
            out[f"tower.{i}.weight"], out[f"tower.{i}.bias"] = [o, c, k, k], [o]
            c, h, w = o, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind in ("maxpool", "avgpool"):
            k = positional[0]
            s = positional[1] if len(positional) > 1 else k
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif kind == "flatten":
            flat = c * h * w
        elif kind == "dense":
            n = positional[0]
            out[f"tower.{i}.weight"], out[f"tower.{i}.bias"] = [n, flat], [n]
            flat = n
    return out, flat


def pytorch_tower(spec, input_shape):
    import torch.nn as nn

    c, h, w = input_shape
    layers, flat = [], None
    for layer in (part.split() for part in spec.split("|")):
        kind, args = layer[0], layer[1:]
        positional = [int(a) for a in args if "=" not in a]
        options = dict(a.split("=") for a in args if "=" in a)
        if kind == "conv":
            o, k = positional
            s, p = int(options.get("stride", 1)), int(options.get("pad", 0))
            layers.append(nn.Conv2d(c, o, k, stride=s, padding=p))
            c, h, w = o, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind in ("maxpool", "avgpool"):
            k = positional[0]
            s = positional[1] if len(positional) > 1 else k
            layers.append((nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d)(k, s))
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif kind == "flatten":
            layers.append(nn.Flatten())
            flat = c * h * w
        elif kind == "dense":
            layers.append(nn.Linear(flat, positional[0]))
            flat = positional[0]
        elif kind in ("relu", "sigmoid", "tanh"):
            layers.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[kind]())
        else:
            raise SystemExit(f"no PyTorch layer for `{kind}` in this check")
    return nn.Sequential(*layers)


def main(path):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(path)
    input_shape = [int(v) for v in meta["input"].split(",")]
    want, dim = expected_tensors(meta["tower"], input_shape)
    got = {name: list(t.shape) for name, t in tensors.items() if name.startswith("tower.")}
    assert got == want, f"tower tensors differ:\n got  {got}\n want {want}"
    for name, t in tensors.items():
        assert str(t.dtype) == "float32", f"{name} is {t.dtype}"
    result = {"tower": meta["tower"], "tensors": len(tensors), "embedding_dim": dim, "names_and_shapes": "ok"}
    try:
        import torch
    except ImportError:
        result["pytorch"] = "not installed: load_state_dict not tried"
    else:
        tower = pytorch_tower(meta["tower"], input_shape)
        state = {name[len("tower."):]: torch.from_numpy(t) for name, t in tensors.items() if name.startswith("tower.")}
        tower.load_state_dict(state, strict=True)
        with torch.no_grad():
            e = tower(torch.zeros(1, *input_shape))
        result["pytorch"] = f"load_state_dict ok, embedding {list(e.shape)}"
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
