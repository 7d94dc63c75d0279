#!/usr/bin/env python3
"""Loads a siamese-gpu checkpoint (RUN_DIR/model.safetensors) outside Rust and checks it.

Reads the file with the `safetensors` package, rebuilds from the tower spec in its metadata
the names and shapes PyTorch's nn.Sequential gives the same layers, and asserts the file
holds exactly those tensors. With PyTorch installed it also loads them into that
nn.Sequential with load_state_dict(strict=True) and embeds a blank image; given the output of
`siamese embed --split test` and the IDX dataset directory, it embeds the first test images
with PyTorch and asserts they match siamese's embeddings.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy safetensors
    /tmp/torchenv/bin/python scripts/check_checkpoint.py RUN_DIR/model.safetensors \
        [--embeddings test.npy --data /usr/share/datasets/fashion-mnist [--images 64]]
"""
import argparse
import gzip
import json
import os

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


def read_idx(path):
    """An unsigned-byte IDX file (gzip'd or raw) as a numpy array."""
    import numpy as np

    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    assert raw[2] == 0x08, f"{path}: not an unsigned-byte IDX file"
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def test_images(data_dir):
    for name in ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"):
        if os.path.isfile(os.path.join(data_dir, name)):
            return read_idx(os.path.join(data_dir, name))
    raise SystemExit(f"{data_dir} holds no t10k-images-idx3-ubyte(.gz): give the IDX dataset the model was trained on")


def load_embeddings(path):
    import numpy as np

    if path.endswith(".safetensors"):
        return load_file(path)["embeddings"]
    return np.load(path)


def compare_embeddings(tower, meta, input_shape, args):
    """Max |PyTorch − siamese| over the first test images; asserts agreement within f32 rounding."""
    import numpy as np
    import torch

    settings = json.loads(meta.get("config", "{}"))
    if settings.get("held_out_classes"):
        raise SystemExit("the run holds out classes, so its test split is not the file's order; not compared")
    ours = load_embeddings(args.embeddings)
    images = test_images(args.data)
    n = min(args.images, len(images), len(ours))
    shift, scale = float(meta.get("pixel_shift", 0)), float(meta.get("pixel_scale", 1))
    x = (images[:n].astype(np.float32) / 255.0 - shift) * scale
    with torch.no_grad():
        theirs = tower(torch.from_numpy(x).reshape(n, *input_shape)).numpy()
    diff = float(np.abs(theirs - ours[:n]).max())
    # Both are f32 sums of the same terms in different orders: differences of a few ulps
    # of the largest values.
    tolerance = 1e-5 + 1e-4 * float(np.abs(theirs).max())
    assert diff <= tolerance, f"embeddings differ by {diff} (tolerance {tolerance})"
    return {"images": n, "max_abs_diff": diff, "tolerance": tolerance}


def main(args):
    path = args.checkpoint
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
        if args.embeddings:
            result["embeddings_match"] = compare_embeddings(tower.eval(), meta, input_shape, args)
    if args.embeddings and "embeddings_match" not in result:
        raise SystemExit("comparing embeddings needs PyTorch: pip install torch")
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="RUN_DIR/model.safetensors")
    parser.add_argument("--embeddings", help="the output of `siamese embed --split test` (.npy or .safetensors)")
    parser.add_argument("--data", help="the IDX dataset directory the model was trained on")
    parser.add_argument("--images", type=int, default=64, help="test images to compare")
    args = parser.parse_args()
    if args.embeddings and not args.data:
        parser.error("--embeddings needs --data")
    main(args)
