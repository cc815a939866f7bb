"""resnetx bench's OpenVINO rows beside OpenVINO's own benchmark_app on the same graphs, and the folder's int8 graph
beside the int8 model NNCF makes for OpenVINO from the same fp32 graph, in one run on this machine.

    python scripts/openvino_anchor.py artifacts/r50              # a folder with fp32 and int8 (--int8-recipe cpu)
    python scripts/openvino_anchor.py artifacts/r50 --nncf-python /tmp/nncf-venv/bin/python

Rows: precision x batch (1 and 32 by default). Each row is measured in --rounds rounds; in each round bench (one
`resnetx bench` of that precision and batch alone) and benchmark_app (-hint latency at batch 1; -hint throughput
above: its optimal number of requests, each of that batch, in flight at once; f32 input, as the graph takes it,
not the u8 input benchmark_app puts in front of an image-shaped input by default) run back to back, their order swapped
every round, so a machine whose speed drifts by more than the bar between minutes (a shared 2-core VM drifts by 20%)
slows both alike. A row prints each side's median over the rounds and the median of the rounds' ratios, with their
range. With --nncf-python (a virtual environment with nncf and openvino), NNCF quantizes the folder's fp32 graph for
OpenVINO (ov.convert_model, then nncf.quantize on 300 images of the folder's calibration data, its defaults), and in
each round benchmark_app times it beside the folder's int8 graph the same way: ours/NNCF.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NNCF = '''
import sys, numpy as np, nncf, openvino as ov
fp32, data, out = sys.argv[1:4]
calib = np.load(data)["calib"]
model = ov.convert_model(fp32)
q = nncf.quantize(model, nncf.Dataset([calib[i : i + 1] for i in range(len(calib))]))
ov.save_model(q, out)
'''


COMPUTE = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "MaxPool", "AvgPool")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def benchmark_app(model: Path, batch: int, shape: tuple[int, ...], seconds: int, fp32: bool,
                  extra: tuple[str, ...] = ()) -> float:
    """OpenVINO's own tool: images per second."""
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    hint = "latency" if batch == 1 else "throughput"
    cmd = [tool, "-m", str(model), "-d", "CPU", "-hint", hint, "-t", str(seconds),
           "-shape", f"[{batch},{','.join(map(str, shape))}]",
           "-ip", "f32", *extra]  # the graph bench runs: benchmark_app would put a u8 input before an image input
    if fp32:
        cmd += ["-infer_precision", "f32"]
    out = _run(cmd)
    found = re.search(r"Throughput:\s+([\d.]+)\s+FPS", out)
    if not found:
        raise SystemExit(f"benchmark_app printed no throughput:\n{out[-2000:]}")
    return float(found.group(1))


def float_layers(model: Path, shape: tuple[int, ...], seconds: int) -> list[str]:
    """The compute layers OpenVINO runs in float in an int8 model, each with its time at batch 1 (benchmark_app's
    per-layer counters): where two int8 models of one graph differ in speed."""
    with tempfile.TemporaryDirectory() as tmp:
        benchmark_app(model, 1, shape, seconds, False, ("-report_type", "detailed_counters", "-report_folder", tmp))
        lines = (Path(tmp) / "benchmark_detailed_counters_report.csv").read_text().splitlines()[1:]
    out = []
    for name, status, kind, exec_type, ms, *_ in (ln.split(";") for ln in lines if ln.count(";") >= 5):
        if status.endswith("EXECUTED") and kind in COMPUTE and exec_type.endswith(("f32", "bf16", "f16")):
            out.append(f"{name} ({kind}, {exec_type}, {float(ms):.2f} ms)")
    return out


def _calibration(folder: Path, out: Path, n: int = 300) -> None:
    """The folder's calibration images as the model takes them (its own preprocessing), for NNCF."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from pipeline.folder.manifest import read_manifest
    from pipeline.model.data import open_dataset, select_indices

    m = read_manifest(folder)
    cal, pre = m.calibration, m.model.info.preprocess
    ds = open_dataset(cal.dataset if cal else "sample", split="train", data_dir=cal.data_dir if cal else None,
                      preprocess=pre)
    idx = select_indices(len(ds), n, 0, shuffle=True)
    np.savez(out, calib=np.concatenate([pre(ds.raw(idx[i : i + 32])) for i in range(0, len(idx), 32)]))


def bench_row(work: Path, precision: str, batch: int, seconds: int) -> float:
    """resnetx bench's images/s for one precision and batch, in its own process (as a user runs it), on `work`: a
    copy of the folder, so that bench's reports do not land in the user's."""
    _run([sys.executable, "-m", "pipeline.cli", "bench", str(work), "--runtime", "openvino", "--precision",
          precision, "--batch", str(batch), "--no-accuracy", "--min-seconds", str(seconds), "--rounds", "1",
          "--iters", "3", "--warmup", "3"],  # timed for as long as benchmark_app, not for bench's default 50 runs
         {"COLUMNS": "200"})
    rows = json.loads((work / "reports" / "cpu" / "bench.json").read_text())["rows"]
    found = [r["throughput_ips"] for r in rows if r.get("latency_ms") and r["batch"] == batch]
    if not found:
        raise SystemExit(f"bench gave no {precision} row at batch {batch}: {rows}")
    return float(found[0])


def _pair(first: Callable[[], float], second: Callable[[], float], swap: bool) -> tuple[float, float]:
    """Two measurements back to back, the later one first when `swap`: (first's, second's)."""
    if swap:
        b = second()
        return first(), b
    a = first()
    return a, second()


def _cell(runs: list[tuple[float, float]]) -> str:
    """One table cell group: each side's median and the median (range) of the rounds' ratios."""
    import numpy as np

    ours, theirs = np.array(runs).T
    ratios = ours / theirs
    return (f"{np.median(ours):>9.1f} {np.median(theirs):>8.1f} {np.median(ratios):>6.2f} "
            f"({ratios.min():.2f}-{ratios.max():.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--seconds", type=int, default=10, help="each side's timed seconds per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per row, each side's order swapped every round")
    ap.add_argument("--precision", default="fp32,fp16,int8", help="which of the folder's graphs")
    ap.add_argument("--nncf-python", help="a python with nncf and openvino: NNCF's int8 model for OpenVINO too")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.folder.manifest import read_manifest

    m = read_manifest(a.folder)
    shape = m.model.info.input_shape
    graphs = [p for p in ("fp32", "fp16", "int8") if p in m.graphs and p in a.precision.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        nncf = _nncf(a.folder, m, Path(tmp), a.nncf_python) if a.nncf_python else None
        work = Path(shutil.copytree(a.folder, Path(tmp) / "f"))  # one copy: every bench row rewrites its reports
        print(f"{'precision':>9} {'batch':>5} {'bench':>9} {'app':>8} {'ratio':>6} {'(range)':<11}"
              + (f" {'ours':>9} {'NNCF':>8} {'ratio':>6} {'(range)':<11}" if nncf else ""), flush=True)
        for p in graphs:
            for b in (int(x) for x in a.batch.split(",")):
                app = partial(benchmark_app, a.folder / m.graphs[p].file, b, shape, a.seconds, p == "fp32")
                vs_app = [_pair(partial(bench_row, work, p, b, a.seconds), app, r % 2 == 1)
                          for r in range(a.rounds)]
                line = f"{p:>9} {b:>5} {_cell(vs_app)}"
                if nncf and p == "int8":
                    theirs = partial(benchmark_app, nncf, b, shape, a.seconds, False)
                    line += f" {_cell([_pair(app, theirs, r % 2 == 1) for r in range(a.rounds)])}"
                print(line, flush=True)
        if nncf and "int8" in graphs:
            for name, path in (("ours", a.folder / m.graphs["int8"].file), ("NNCF", nncf)):
                layers = float_layers(path, shape, a.seconds)
                print(f"{name}: layers in float at batch 1: {', '.join(layers) or 'none'}")
    print("bench, app: images/s, each the median over the rounds (bench's row; benchmark_app on the same graph); "
          "ratio: the median of the rounds' bench/app (1.00: the harness adds nothing), with their range; "
          "ours/NNCF: the folder's int8 graph over NNCF's OpenVINO int8 model, both timed by benchmark_app")
    return 0


def _nncf(folder: Path, m: Any, tmp: Path, python: str) -> Path:
    """NNCF's OpenVINO int8 model of the folder's fp32 graph, made in its own virtual environment."""
    _calibration(folder, tmp / "calib.npz")
    out = tmp / "nncf" / "model.xml"
    _run([python, "-c", NNCF, str(folder / m.graphs["fp32"].file), str(tmp / "calib.npz"), str(out)])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
