#!/usr/bin/env python3
"""Loads a siamese-gpu checkpoint (RUN_DIR/model.safetensors) outside Rust and checks it.

Reads the file with the `safetensors` package, rebuilds from the tower spec in its metadata
(any spec: BatchNorm with its running statistics, residual blocks, pooling, dropout; or a
preset: resnet18 and resnet34 with torchvision's names, resnet-small with
peers/modern_reference.py's) the names and shapes PyTorch's modules give the same layers,
and asserts the file holds exactly those tensors. With PyTorch installed it also builds those
modules, loads the file with load_state_dict(strict=True) and embeds a blank image in
evaluation mode; given the output of `siamese embed --split test` and the IDX dataset
directory, it embeds the first test images with PyTorch and asserts they match siamese's
embeddings.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy safetensors
    /tmp/torchenv/bin/python scripts/check_checkpoint.py RUN_DIR/model.safetensors \
        [--embeddings test.npy --data /usr/share/datasets/fashion-mnist [--images 64]]
"""
import argparse
import gzip
import json
import math
import os

from safetensors import safe_open
from safetensors.numpy import load_file


def split_top(text, sep):
    """`text` split at each `sep` outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def parse_spec(text, prefix=""):
    """The spec's layers as (name, kind, words) nodes, named as siamese-gpu names them: the
    position in the spec (`3`, inside a block `3.branch.0`, `3.shortcut.1`); a residual
    block's words are (branch nodes, shortcut nodes)."""
    preset = preset_nodes(text)
    if preset is not None:
        return preset
    nodes = []
    for i, part in enumerate(split_top(text, "|")):
        part, name = part.strip().lower(), f"{prefix}{i}"
        if part.startswith("res(") and part.endswith(")"):
            pieces = split_top(part[4:-1], ";")
            branch = parse_spec(pieces[0], f"{name}.branch.")
            shortcut = parse_spec(pieces[1], f"{name}.shortcut.") if len(pieces) > 1 else []
            nodes.append((name, "res", (branch, shortcut)))
        else:
            words = part.split()
            nodes.append((name, {"linear": "dense"}.get(words[0], words[0]), words[1:]))
    return nodes


def basic_block(name, names, c_in, c_out, stride):
    """siamese-gpu's presets' basic block (src/nn/presets.rs), and the ReLU after it."""
    conv1, bn1, conv2, bn2, projection = names
    branch = [(f"{name}.{conv1}", "conv", [str(c_out), "3", f"stride={stride}", "pad=1", "bias=false"]),
              (f"{name}.{bn1}", "bn", []), (f"{name}.relu", "relu", []),
              (f"{name}.{conv2}", "conv", [str(c_out), "3", "pad=1", "bias=false"]),
              (f"{name}.{bn2}", "bn", [])]
    shortcut = []
    if stride != 1 or c_in != c_out:
        shortcut = [(f"{name}.{projection}.0", "conv", [str(c_out), "1", f"stride={stride}", "bias=false"]),
                    (f"{name}.{projection}.1", "bn", [])]
    return [(name, "res", (branch, shortcut)), (f"{name}.relu", "relu", [])]


def preset_nodes(text):
    """The layers of a preset (`resnet18 [dim=N]`, `resnet34`, `resnet-small [width=W]`),
    with torchvision's module names (or peers/modern_reference.py's); None for a spec."""
    words = text.strip().lower().split()
    options = dict(w.split("=") for w in words[1:] if "=" in w)
    dim = options.get("dim", "128")
    if words and words[0] in ("resnet18", "resnet34"):
        nodes = [("conv1", "conv", ["64", "7", "stride=2", "pad=3", "bias=false"]), ("bn1", "bn", []),
                 ("relu", "relu", []), ("maxpool", "maxpool", ["3", "2", "pad=1"])]
        c_in = 64
        for stage, count in enumerate([2, 2, 2, 2] if words[0] == "resnet18" else [3, 4, 6, 3]):
            c_out = 64 << stage
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                nodes += basic_block(f"layer{stage + 1}.{b}", ("conv1", "bn1", "conv2", "bn2", "downsample"),
                                     c_in, c_out, stride)
                c_in = c_out
        return nodes + [("avgpool", "gap", []), ("flatten", "flatten", []), ("fc", "dense", [dim])]
    if words and words[0] in ("resnet-small", "resnet_small"):
        w = int(options.get("width", 16))
        nodes = [("0", "conv", [str(w), "3", "pad=1", "bias=false"]), ("1", "bn", []), ("2", "relu", [])]
        for i, (c_in, c_out, stride) in enumerate([(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)]):
            nodes += basic_block(str(3 + i), ("c1", "b1", "c2", "b2", "proj"), c_in, c_out, stride)
        return nodes + [("6", "gap", []), ("7", "flatten", []), ("8", "dense", [dim])]
    return None


def layer_args(words):
    positional = [a for a in words if "=" not in a]
    options = dict(a.split("=") for a in words if "=" in a)
    return positional, options


def expected_tensors(nodes, shape, out=None):
    """{name: shape} of the tensors the nodes' layers hold (PyTorch's state_dict names and
    shapes), and the output shape."""
    out = {} if out is None else out
    for name, kind, words in nodes:
        if kind == "res":
            branch_shape = expected_tensors(words[0], shape, out)[1]
            expected_tensors(words[1], shape, out)
            shape = branch_shape
            continue
        positional, options = layer_args(words)
        if kind == "conv":
            o, k = int(positional[0]), int(positional[1])
            s, p = int(options.get("stride", 1)), int(options.get("pad", 0))
            out[f"{name}.weight"] = [o, shape[0], k, k]
            if options.get("bias", "true") != "false":
                out[f"{name}.bias"] = [o]
            shape = [o, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1]
        elif kind == "bn":
            c = shape[0]
            for t in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{t}"] = [c]
            out[f"{name}.num_batches_tracked"] = []
        elif kind in ("maxpool", "avgpool"):
            k = int(positional[0])
            s = int(positional[1]) if len(positional) > 1 else k
            p = int(options.get("pad", 0))
            shape = [shape[0], (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1]
        elif kind == "gap":
            shape = [shape[0]]
        elif kind == "flatten":
            shape = [math.prod(shape)]
        elif kind == "dense":
            n = int(positional[0])
            out[f"{name}.weight"], out[f"{name}.bias"] = [n, shape[0]], [n]
            shape = [n]
    return out, shape


def pytorch_tower(nodes, input_shape):
    """An nn.Module running the nodes, its parameters and buffers under the nodes' names (so
    load_state_dict(strict=True) checks every name and shape)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []

        def place(self, name, module):
            """Registers `module` at the dotted `name`, making the containers on the way."""
            *path, last = name.split(".")
            parent = self
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(last, module)
            return module

        def forward(self, x):
            return run(self.steps, x)

    def run(steps, x):
        for step in steps:
            x = step(x)
        return x

    tower = Tower()

    def build(nodes, shape):
        steps = []
        for name, kind, words in nodes:
            if kind == "res":
                branch, branch_shape = build(words[0], shape)
                shortcut, _ = build(words[1], shape)
                steps.append(lambda x, b=branch, s=shortcut: run(b, x) + run(s, x))
                shape = branch_shape
                continue
            positional, options = layer_args(words)
            if kind == "conv":
                o, k = int(positional[0]), int(positional[1])
                s, p = int(options.get("stride", 1)), int(options.get("pad", 0))
                bias = options.get("bias", "true") != "false"
                steps.append(tower.place(name, nn.Conv2d(shape[0], o, k, stride=s, padding=p, bias=bias)))
                shape = [o, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1]
            elif kind == "bn":
                norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
                steps.append(tower.place(name, norm(shape[0])))
            elif kind in ("maxpool", "avgpool"):
                k = int(positional[0])
                s = int(positional[1]) if len(positional) > 1 else k
                p = int(options.get("pad", 0))
                pool = nn.MaxPool2d(k, s, padding=p) if kind == "maxpool" else nn.AvgPool2d(k, s)
                steps.append(pool)
                shape = [shape[0], (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1]
            elif kind == "gap":
                steps.append(lambda x: x.mean(dim=(2, 3)))
                shape = [shape[0]]
            elif kind == "flatten":
                steps.append(nn.Flatten())
                shape = [math.prod(shape)]
            elif kind == "dense":
                steps.append(tower.place(name, nn.Linear(shape[0], int(positional[0]))))
                shape = [int(positional[0])]
            elif kind == "dropout":
                steps.append(tower.place(name, nn.Dropout(float(positional[0]))))
            elif kind in ("relu", "sigmoid", "tanh"):
                steps.append({"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[kind])
            elif kind == "l2norm":
                steps.append(lambda x: F.normalize(x, dim=1))
            else:
                raise SystemExit(f"no PyTorch layer for `{kind}` in this check")
        return steps, shape

    tower.steps, _ = build(nodes, list(input_shape))
    return tower


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
    nodes = parse_spec(meta["tower"])
    want, (dim,) = expected_tensors(nodes, input_shape)
    want = {f"tower.{name}": shape for name, shape in want.items()}
    got = {name: list(t.shape) for name, t in tensors.items() if name.startswith("tower.")}
    assert got == want, f"tower tensors differ:\n got  {got}\n want {want}"
    for name, t in tensors.items():
        want_dtype = "int64" if name.endswith(".num_batches_tracked") else "float32"
        assert str(t.dtype) == want_dtype, f"{name} is {t.dtype}, not {want_dtype}"
    result = {"tower": meta["tower"], "tensors": len(tensors), "embedding_dim": dim, "names_and_shapes": "ok"}
    try:
        import torch
    except ImportError:
        result["pytorch"] = "not installed: load_state_dict not tried"
    else:
        tower = pytorch_tower(nodes, input_shape).eval()
        state = {name[len("tower."):]: torch.from_numpy(t) for name, t in tensors.items() if name.startswith("tower.")}
        tower.load_state_dict(state, strict=True)
        with torch.no_grad():
            e = tower(torch.zeros(1, *input_shape))
        result["pytorch"] = f"load_state_dict ok, embedding {list(e.shape)}"
        if args.embeddings:
            result["embeddings_match"] = compare_embeddings(tower, meta, input_shape, args)
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
