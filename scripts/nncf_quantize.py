"""NNCF's int8 of an ONNX graph, for scripts/int8_anchor.py; runs in a virtual environment that has nncf.

    python nncf_quantize.py FP32.onnx DATA.npz OUT.onnx [--max-drop POINTS]

DATA.npz holds `calib` (calibration images) and `x`, `y` (the labelled images that judge --max-drop). Without
--max-drop: nncf.quantize; with it: nncf.quantize_with_accuracy_control, absolute top-1 drop. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import nncf
import numpy as np
import onnx
import onnxruntime as ort


def top1(model: onnx.ModelProto, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    correct = total = 0
    for x, y in data:
        correct += int((sess.run(None, {"input": x})[0].argmax(1) == y).sum())
        total += len(y)
    return correct / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("data")
    ap.add_argument("dst")
    ap.add_argument("--max-drop", type=float)
    a = ap.parse_args()
    d = np.load(a.data)
    calib = nncf.Dataset([d["calib"][i : i + 1] for i in range(len(d["calib"]))], lambda x: {"input": x})
    model = onnx.load(a.src)
    start = time.perf_counter()
    if a.max_drop is None:
        q = nncf.quantize(model, calib, subset_size=len(d["calib"]))
    else:
        val = [(d["x"][i : i + 250], d["y"][i : i + 250]) for i in range(0, len(d["y"]), 250)]
        q = nncf.quantize_with_accuracy_control(
            model, calib, nncf.Dataset(val, lambda item: {"input": item[0]}), validation_fn=top1,
            max_drop=a.max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(d["calib"]))
    seconds = time.perf_counter() - start
    onnx.save(q, a.dst)
    print(json.dumps({"seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
