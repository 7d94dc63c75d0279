#!/usr/bin/env python3
"""Checks `siamese export`'s ONNX model with the ONNX tooling and ONNX Runtime.

It validates the file with `onnx.checker` (full check, shape inference), then runs it with
ONNX Runtime on the first test images of an IDX dataset (pixels / 255, as torchvision's
ToTensor gives them; the graph applies the run's own normalisation) and compares the
embeddings with those `siamese embed` wrote for the same split, at two batch sizes (the
batch dimension is symbolic). Prints one JSON object; exits 1 if a check fails.

    python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install onnx onnxruntime numpy
    siamese export --checkpoint RUN --out /tmp/model.onnx
    siamese embed --checkpoint RUN --split test --out /tmp/test.npy
    /tmp/ortenv/bin/python scripts/check_onnx.py /tmp/model.onnx --embeddings /tmp/test.npy \
        --data /usr/share/datasets/fashion-mnist
"""

import argparse
import gzip
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx_images(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(data, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data, name)
        if os.path.exists(path):
            return path
    sys.exit(f"no {stem}[.gz] in {data}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--embeddings", required=True, help="siamese embed's .npy of the test split")
    p.add_argument("--data", required=True, help="the IDX dataset directory")
    p.add_argument("--images", type=int, default=256)
    a = p.parse_args()

    model = onnx.load(a.model)
    onnx.checker.check_model(model, full_check=True)
    meta = {m.key: m.value for m in model.metadata_props}
    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    images = read_idx_images(find(a.data, "t10k-images-idx3-ubyte"))[: a.images]
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    ours = np.load(a.embeddings)[: a.images]
    whole = session.run(["embeddings"], {"images": x})[0]
    # The same images in batches of 7: a symbolic batch dimension gives the same rows.
    pieces = [session.run(["embeddings"], {"images": x[i : i + 7]})[0] for i in range(0, len(x), 7)]
    batched = np.concatenate(pieces)
    scale = float(np.abs(ours).max())
    diff = float(np.abs(whole - ours).max())
    batch_diff = float(np.abs(batched - whole).max())
    # f32 sums taken in another order: 1e-4 of the largest value, as check_checkpoint.py.
    tolerance = 1e-4 * scale
    ok = diff <= tolerance and batch_diff <= tolerance
    print(json.dumps({
        "checker": "ok (full_check, shape inference)",
        "opset": [o.version for o in model.opset_import],
        "onnxruntime": ort.__version__,
        "nodes": len(model.graph.node),
        "metadata_keys": sorted(meta),
        "images": len(x),
        "embeddings_match": {"max_abs_diff": diff, "largest_value": scale, "tolerance": tolerance},
        "batches_of_7_vs_one_batch_max_abs_diff": batch_diff,
        "ok": ok,
    }, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
