"""resnetx's int8 against NNCF's, side by side on the same fp32 ONNX, calibration and validation images.

    python scripts/int8_anchor.py --nncf-python /path/to/nncf-venv/bin/python [--models default,hostile,...]
    python scripts/int8_anchor.py --methods [--models ...]   # plain int8's drop by each calibration method

NNCF runs in its own virtual environment (pip install nncf onnx onnxruntime torch==2.13.0), through
scripts/nncf_quantize.py; both sides get 300 calibration images (Fashion-MNIST train, resnetx's seeded draw),
judge the budget on the first 2,000 test images, and are scored by an independent onnxruntime pass over the
other 8,000 test images. Each side runs in two layouts: TensorRT's (resnetx's tensorrt recipe; NNCF with every
activation signed, --signed of nncf_quantize.py) and the CPU one (resnetx's cpu recipe; NNCF's default, uint8 for
non-negative tensors). Prints a Markdown table; seconds are wall time: resnetx's whole export, and its int8 step
alone (calibration, search, final graph), against NNCF's quantize call (its data already in memory), NNCF's
default and NNCF's run in the same layout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporters.onnx import run_cpu  # noqa: E402
from exporters.quantize import Int8Recipe, quantized_layers  # noqa: E402
from pipeline.folder.manifest import read_manifest  # noqa: E402
from pipeline.make.export import ExportOptions, export  # noqa: E402
from pipeline.model.data import iter_batches, open_dataset  # noqa: E402
from pipeline.model.zoo import load_model, save_checkpoint  # noqa: E402
from pipeline.precisions import Precision  # noqa: E402
from pipeline.sources import ModelSpec  # noqa: E402
from tests.int8_hostile import make_int8_hostile, make_residual_hostile  # noqa: E402

CALIB, JUDGE = 300, 2000
# resnetx's tensorrt recipe (symmetric int8 activations, what TensorRT runs), the same judged on the drop alone, its
# cpu recipe (uint8 activations: the layout NNCF makes for CPUs), NNCF (its CPU default), and NNCF in TensorRT's
# layout (every activation symmetric and signed)
TOOLS = ("resnetx", "resnetx, margin 0", "resnetx, cpu recipe", "NNCF", "NNCF, signed (TensorRT's layout)")
SAME_LAYOUT = {"resnetx": TOOLS[4], "resnetx, margin 0": TOOLS[4], "resnetx, cpu recipe": "NNCF"}  # NNCF's run to time
# each against where the layouts match


def _checkpoint(name: str, tmp: Path, r18: Path | None) -> tuple[ModelSpec, str]:
    """(spec, description) of the model under test; hostile ones are saved as resnetx checkpoints."""
    if name == "default":
        return ModelSpec("default"), "default ResNet-20 (Fashion-MNIST)"
    if name.startswith("resnet18"):
        if r18 is None:
            raise SystemExit("--resnet18 CHECKPOINT (resnetx train --model resnet18 --image-size 32) is needed")
        model, info = load_model(ModelSpec("resnet18", weights=r18))
        make_int8_hostile(model, ("layer1.1", "layer2.1", "layer3.1"), channels=4, factor=60.0)
        arch, desc = "resnet18", "hostile ResNet-18 (4 channels x60 in 3 blocks)"
    elif name == "residual":
        model, info = load_model(ModelSpec("default"))
        make_residual_hostile(model, channels=2, factor=30.0)
        arch, desc = "resnet20", "residual-hostile ResNet-20 (2 channels x30 in stage 1's residual stream)"
    else:
        channels, factor = (2, 40.0) if name == "hostile" else (3, 100.0)
        model, info = load_model(ModelSpec("default"))
        make_int8_hostile(model, channels=channels, factor=factor)
        arch, desc = "resnet20", f"hostile ResNet-20 ({channels} channels x{factor:g} in 3 blocks)"
    path = tmp / f"{name}.pt"
    save_checkpoint(path, model, {"arch": arch, "num_classes": info.num_classes, "in_chans": info.in_chans,
                                  "image_size": info.image_size, "preprocess": info.preprocess.to_dict(),
                                  "class_names": list(info.class_names or [])})
    return ModelSpec(arch, weights=path), desc


def _top1(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((run_cpu(path, x, batch=500).argmax(1) == y).mean())


def _floats(path: Path) -> int:
    import onnx

    m = onnx.load(str(path))
    return sum(n.op_type in ("Conv", "Gemm") for n in m.graph.node) - len(quantized_layers(m))


def _resnetx(spec: ModelSpec, folder: Path, budget: float | None, margin: float | None = None,
             target: Int8Recipe = Int8Recipe.tensorrt) -> tuple[Path, float, float]:
    """The int8 graph, the export's wall time, and its int8 step's (calibration, search, final graph and its
    check: what NNCF's call does; the export's own model load, data reads and manifest left out)."""
    export(ExportOptions(model=spec, out=folder, reference_samples=0))  # the fp32 graph, not timed
    start = time.perf_counter()
    export(ExportOptions(model=spec, out=folder, precisions=(Precision.fp32, Precision.int8),
                         calib_data="fashion-mnist", calib_samples=CALIB, max_accuracy_drop=budget,
                         accuracy_samples=JUDGE, accuracy_margin=margin, int8_recipe=target, reference_samples=0,
                         search_seconds=1800))
    wall = time.perf_counter() - start
    return folder / "model.int8.onnx", wall, read_manifest(folder).graphs["int8"].seconds


def _nncf(python: str, fp32: Path, data: Path, out: Path, budget: float | None,
          signed: bool = False) -> tuple[Path, float]:
    cmd = [python, str(ROOT / "scripts" / "nncf_quantize.py"), str(fp32), str(data), str(out)]
    if budget is not None:
        cmd += ["--max-drop", str(budget)]
    if signed:
        cmd.append("--signed")
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"NNCF failed: {r.stderr[-2000:]}")
    return out, json.loads(r.stdout.strip().splitlines()[-1])["seconds"]


def _methods(names: list[str], r18: Path | None) -> None:
    """Which calibration method the search should try: plain int8 (every layer, as the search starts) by each."""
    from exporters.calibrate import CalibMethod

    print("| model | " + " | ".join(m.value for m in CalibMethod) + " |\n|---|" + "---:|" * len(CalibMethod))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name in names:
            spec, desc = _checkpoint(name, tmp, r18)
            _, info = load_model(spec)
            test = open_dataset("fashion-mnist", split="test")
            x = np.concatenate([b.x for b in iter_batches(test, info.preprocess, 1000)])[:JUDGE]
            y = test.labels.astype(np.int64)[:JUDGE]
            drops = []
            for m in CalibMethod:
                folder = tmp / name / m.value
                export(ExportOptions(model=spec, out=folder, precisions=(Precision.fp32, Precision.int8),
                                     calib_data="fashion-mnist", calib_samples=CALIB, calib_method=m,
                                     int8_quantize_ends=True, reference_samples=0))
                drops.append(_top1(folder / "model.fp32.onnx", x, y) - _top1(folder / "model.int8.onnx", x, y))
            print(f"| {desc} | " + " | ".join(f"{d:+.2f}" for d in drops) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nncf-python")
    ap.add_argument("--methods", action="store_true", help="plain int8's drop by each calibration method instead")
    ap.add_argument("--models", default="default,hostile,hostile-strong,residual")
    ap.add_argument("--resnet18", type=Path)
    ap.add_argument("--budget", type=float, default=0.5)
    a = ap.parse_args()
    if a.methods:
        return _methods(a.models.split(","), a.resnet18)
    if not a.nncf_python:
        raise SystemExit("--nncf-python PYTHON (a virtual environment with nncf) is needed")
    rows = [f"| model | tool | plain: drop | budget {a.budget:g}: drop on the judging 2k / on the other 8k | "
            "conv/gemm in float | seconds (plain / with budget) | budget's seconds / NNCF's | int8 step's / NNCF's "
            "| int8 step's / NNCF's in the same layout |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name in a.models.split(","):
            spec, desc = _checkpoint(name, tmp, a.resnet18)
            _, info = load_model(spec)
            calib = np.concatenate([b.x for b in iter_batches(open_dataset("fashion-mnist", split="train"),
                                                              info.preprocess, 64, limit=CALIB, shuffle=True)])
            test = open_dataset("fashion-mnist", split="test")
            x = np.concatenate([b.x for b in iter_batches(test, info.preprocess, 1000)])
            y = test.labels.astype(np.int64)
            np.savez(tmp / "data.npz", calib=calib, x=x[:JUDGE], y=y[:JUDGE])
            fp32 = tmp / name / "model.fp32.onnx"
            results = {}
            for tool in TOOLS:
                for budget in (None, a.budget):
                    if tool == "resnetx":
                        q, secs, step = _resnetx(spec, tmp / name / ("plain" if budget is None else "ac"), budget)
                        fp32 = q.parent / "model.fp32.onnx"
                    elif tool == "resnetx, margin 0" and budget is None:  # plain int8 has no margin
                        results[(tool, budget)] = results[("resnetx", None)]
                        continue
                    elif tool == "resnetx, margin 0":
                        q, secs, step = _resnetx(spec, tmp / name / "ac0", budget, margin=0.0)
                    elif tool == "resnetx, cpu recipe":
                        q, secs, step = _resnetx(spec, tmp / name / ("cpu" if budget is None else "cpu-ac"), budget,
                                                 target=Int8Recipe.cpu)
                    else:
                        signed = tool != "NNCF"
                        q, secs = _nncf(a.nncf_python, fp32, tmp / "data.npz",
                                        tmp / f"nncf-{'signed-' * signed}{budget}.onnx", budget, signed)
                        step = secs
                    base_j, base_o = _top1(fp32, x[:JUDGE], y[:JUDGE]), _top1(fp32, x[JUDGE:], y[JUDGE:])
                    results[(tool, budget)] = (base_j - _top1(q, x[:JUDGE], y[:JUDGE]),
                                               base_o - _top1(q, x[JUDGE:], y[JUDGE:]), _floats(q), secs, step)
            nncf = results[("NNCF", a.budget)][3]
            for tool in TOOLS:
                p, b = results[(tool, None)], results[(tool, a.budget)]
                same = results[(SAME_LAYOUT.get(tool, tool), a.budget)][3]
                rows.append(f"| {desc} | {tool} | {p[1]:+.2f} | {b[0]:+.2f} / {b[1]:+.2f} | {b[2]} "
                            f"| {p[3]:.1f} / {b[3]:.1f} | {b[3] / nncf:.2f} | {b[4] / nncf:.2f} | {b[4] / same:.2f} |")
            print("\n".join(rows[-len(TOOLS):]), flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
