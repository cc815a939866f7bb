"""Which int8 layout is accurate and fast on THIS CPU: the cpu recipe (onnxruntime's QDQ layout, u8 activations x s8
weights) as shipped, with onnxruntime's `reduce_range` (7-bit weights: its remedy for u8 x s8 saturation on CPUs
without VNNI), and with s8 (symmetric) activations. Each variant is exported in-process, then verified (top-1 against
fp32 and the labels) and benched with onnxruntime and OpenVINO in child processes. One run, one table.

    python scripts/cpu_recipe.py --model default --verify-samples 10000
    python scripts/cpu_recipe.py --model resnet18 --weights r18.pt --image-size 224 --verify-data imagefolder:DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.make.graphs as graphs  # noqa: E402
from exporters.quantize import INT8_RECIPES, Int8Recipe  # noqa: E402
from pipeline.machine import cpu_isa, cpu_name  # noqa: E402
from pipeline.make.export import ExportOptions, export  # noqa: E402
from pipeline.model.zoo import ModelSpec  # noqa: E402
from pipeline.precisions import Precision  # noqa: E402

SHIPPED = INT8_RECIPES[Int8Recipe.cpu]
CHOSEN = graphs.reduce_range  # what export picks from this CPU's instruction sets
VARIANTS = {  # name -> (layout, reduce_range)
    "u8s8": (SHIPPED, False),
    "u8s8 reduce_range": (SHIPPED, True),
    "s8s8 symmetric": (dataclasses.replace(SHIPPED, activation="int8"), False),
}


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True, stdout=subprocess.DEVNULL)


def measure(folder: Path, a: argparse.Namespace) -> dict:
    data = ["--data", a.verify_data] + (["--data-dir", str(a.verify_dir)] if a.verify_dir else [])
    cli("verify", str(folder), "--runtime", "ort", "--samples", str(a.verify_samples), *data)
    rows = json.loads((folder / "reports" / "cpu" / "verify.json").read_text())["rows"]
    m = {r["precision"]: r["metrics"] for r in rows}
    cli("bench", str(folder), "--runtime", "ort,openvino", "--batch", "1,32", "--min-seconds", str(a.min_seconds),
        "--no-accuracy")
    bench = json.loads((folder / "reports" / "cpu" / "bench.json").read_text())["rows"]
    speed = {(r["backend"], r["precision"], r["batch"]): r["throughput_ips"] for r in bench if r.get("throughput_ips")}
    return {"metrics": m, "speed": speed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--calib-data", default="fashion-mnist")
    ap.add_argument("--calib-dir", type=Path)
    ap.add_argument("--verify-data", default="fashion-mnist")
    ap.add_argument("--verify-dir", type=Path)
    ap.add_argument("--verify-samples", type=int, default=10000)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    a = ap.parse_args()
    print(f"CPU: {cpu_name()}; int8-relevant ISA: {', '.join(cpu_isa()) or 'none'}; export picks u8s8"
          + (" reduce_range" if CHOSEN(ExportOptions(int8_recipe="cpu")) else "") + " here")
    spec = ModelSpec(a.model, weights=a.weights, image_size=a.image_size) if a.image_size else ModelSpec(
        a.model, weights=a.weights)
    table = []
    with tempfile.TemporaryDirectory(prefix="rx-recipe-") as tmp:
        for name, (recipe, rr) in VARIANTS.items():
            INT8_RECIPES[Int8Recipe.cpu] = recipe
            graphs.reduce_range = lambda _o, rr=rr: rr
            folder = Path(tmp) / name.replace(" ", "-")
            export(ExportOptions(model=spec, out=folder, precisions=(Precision.fp32, Precision.int8),
                                 int8_recipe="cpu", calib_data=a.calib_data, calib_dir=a.calib_dir,
                                 reference_samples=0))
            r = measure(folder, a)
            table.append((name, r))
            print(f"measured {name}", flush=True)
    INT8_RECIPES[Int8Recipe.cpu], graphs.reduce_range = SHIPPED, CHOSEN
    print(f"\n{'variant':<20} {'top-1 agree':>11} {'fp32 top-1':>10} {'int8 top-1':>10} {'drop':>6} "
          f"{'ort b1':>7} {'ort b32':>7} {'ov b1':>7} {'ov b32':>7}   (speed: int8 over ort fp32, same batch)")
    for name, r in table:
        m, s = r["metrics"]["int8"], r["speed"]
        ratios = [s.get((rt, "int8", b), 0) / s[("ort", "fp32", b)] for rt in ("ort", "openvino") for b in (1, 32)]
        print(f"{name:<20} {100 * m['top1_agreement']:>10.2f}% {m['ref_top1']:>10.2f} {m['top1']:>10.2f} "
              f"{m['ref_top1'] - m['top1']:>+6.2f} " + " ".join(f"{x:>6.2f}x" for x in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
