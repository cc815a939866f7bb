"""NNCF's int8 of an ONNX graph, for scripts/int8_anchor.py; runs in a virtual environment that has nncf.

    python nncf_quantize.py FP32.onnx DATA.npz OUT.onnx [--max-drop POINTS] [--signed]

DATA.npz holds `calib` (calibration images) and `x`, `y` (the labelled images that judge --max-drop). Without
--max-drop: nncf.quantize; with it: nncf.quantize_with_accuracy_control, absolute top-1 drop. --signed: the layout
TensorRT runs, every activation symmetric and signed int8 (the PERFORMANCE preset, signedness forced), instead of
NNCF's CPU default (uint8 for non-negative tensors). NNCF's hardware setups let only weights force their sign, so
--signed lets activations force it too (`_signed_activations`); NNCF's algorithms are unchanged. Prints one JSON line.
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


def _signed_activations() -> tuple[object, object]:
    """The preset and advanced parameters of TensorRT's layout, with NNCF's hardware setup allowing signed
    activations."""
    import dataclasses

    import nncf.common.hardware.config as hw
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    setup = hw.get_hw_setup

    def signed(target_device):  # noqa: ANN001, ANN202
        return tuple(dataclasses.replace(op, activations=tuple(dataclasses.replace(q, signedness_to_force=True)
                                                               for q in op.activations)) for op in setup(target_device))

    hw.get_hw_setup = signed
    return nncf.QuantizationPreset.PERFORMANCE, AdvancedQuantizationParameters(
        activations_quantization_params=QuantizationParameters(signedness_to_force=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("data")
    ap.add_argument("dst")
    ap.add_argument("--max-drop", type=float)
    ap.add_argument("--signed", action="store_true")
    a = ap.parse_args()
    preset, advanced = _signed_activations() if a.signed else (None, None)
    d = np.load(a.data)
    calib = nncf.Dataset([d["calib"][i : i + 1] for i in range(len(d["calib"]))], lambda x: {"input": x})
    model = onnx.load(a.src)
    start = time.perf_counter()
    if a.max_drop is None:
        q = nncf.quantize(model, calib, subset_size=len(d["calib"]), preset=preset, advanced_parameters=advanced)
    else:
        val = [(d["x"][i : i + 250], d["y"][i : i + 250]) for i in range(0, len(d["y"]), 250)]
        q = nncf.quantize_with_accuracy_control(
            model, calib, nncf.Dataset(val, lambda item: {"input": item[0]}), validation_fn=top1,
            max_drop=a.max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(d["calib"]),
            preset=preset, advanced_quantization_parameters=advanced)
    seconds = time.perf_counter() - start
    onnx.save(q, a.dst)
    print(json.dumps({"seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
