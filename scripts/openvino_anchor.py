"""resnetx bench's OpenVINO rows beside OpenVINO's own benchmark_app on the same graphs, and the folder's int8 graph
beside the int8 model NNCF makes for OpenVINO from the same fp32 graph, in one run on this machine.

    python scripts/openvino_anchor.py artifacts/r50              # a folder with fp32 and int8 (--int8-recipe cpu)
    python scripts/openvino_anchor.py artifacts/r50 --nncf-python /tmp/nncf-venv/bin/python

Rows: precision x batch (1 and 32 by default). bench's images/s (a row's mean latency, one call of the whole batch)
beside benchmark_app's (-hint latency at batch 1; -hint throughput at a batch of 32: its optimal number of requests,
each of that batch, in flight at once), measured before and after bench and averaged (a shared machine drifts), and
their ratio. With --nncf-python (a virtual environment with nncf and
openvino), NNCF quantizes the folder's fp32 graph for OpenVINO (ov.convert_model, then nncf.quantize on 300 images of
the folder's calibration data, its defaults) and benchmark_app times it too: the folder's int8 graph over NNCF's.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NNCF = '''
import sys, numpy as np, nncf, openvino as ov
fp32, data, out = sys.argv[1:4]
calib = np.load(data)["calib"]
model = ov.convert_model(fp32)
q = nncf.quantize(model, nncf.Dataset([calib[i : i + 1] for i in range(len(calib))]))
ov.save_model(q, out)
'''


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def benchmark_app(model: Path, batch: int, shape: tuple[int, ...], seconds: int, fp32: bool) -> float:
    """OpenVINO's own tool: images per second."""
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    hint = "latency" if batch == 1 else "throughput"
    cmd = [tool, "-m", str(model), "-d", "CPU", "-hint", hint, "-t", str(seconds),
           "-shape", f"[{batch},{','.join(map(str, shape))}]"]
    if fp32:
        cmd += ["-infer_precision", "f32"]
    out = _run(cmd)
    found = re.search(r"Throughput:\s+([\d.]+)\s+FPS", out)
    if not found:
        raise SystemExit(f"benchmark_app printed no throughput:\n{out[-2000:]}")
    return float(found.group(1))


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--seconds", type=int, default=15, help="benchmark_app's time per row")
    ap.add_argument("--nncf-python", help="a python with nncf and openvino: NNCF's int8 model for OpenVINO too")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.folder.manifest import read_manifest

    m = read_manifest(a.folder)
    shape = m.model.info.input_shape
    batches = [int(b) for b in a.batch.split(",")]
    graphs = [p for p in ("fp32", "fp16", "int8") if p in m.graphs]

    def apps() -> dict[tuple[str, int], float]:
        return {(p, b): benchmark_app(a.folder / m.graphs[p].file, b, shape, a.seconds, p == "fp32")
                for p in graphs for b in batches}

    with tempfile.TemporaryDirectory() as tmp:
        before = apps()
        work = Path(shutil.copytree(a.folder, Path(tmp) / "f"))
        _run([sys.executable, "-m", "pipeline.cli", "bench", str(work), "--runtime", "openvino", "--batch", a.batch,
              "--no-accuracy", "--min-seconds", str(a.seconds), "--rounds", "3"], {"COLUMNS": "200"})
        bench = json.loads((work / "reports" / "cpu" / "bench.json").read_text())
        ours = {(r["precision"], r["batch"]): r["throughput_ips"] for r in bench["rows"] if r.get("latency_ms")}
        after = apps()
        nncf = None
        if a.nncf_python:
            _calibration(a.folder, Path(tmp) / "calib.npz")
            nncf = Path(tmp) / "nncf" / "model.xml"
            _run([a.nncf_python, "-c", NNCF, str(a.folder / m.graphs["fp32"].file), str(Path(tmp) / "calib.npz"),
                  str(nncf)])
        print(f"{'precision':>9} {'batch':>5} {'bench img/s':>12} {'benchmark_app':>14} {'ratio':>6}"
              + (f" {'NNCF int8':>10} {'ours/NNCF':>10}" if nncf else ""))
        for p in graphs:
            for b in batches:
                theirs = (before[(p, b)] + after[(p, b)]) / 2
                line = f"{p:>9} {b:>5} {ours.get((p, b), float('nan')):>12.1f} {theirs:>14.1f} " \
                       f"{ours.get((p, b), float('nan')) / theirs:>6.2f}"
                if nncf and p == "int8":
                    n = benchmark_app(nncf, b, shape, a.seconds, False)
                    line += f" {n:>10.1f} {theirs / n:>10.2f}"
                print(line, flush=True)
    print("ratio: bench's row over benchmark_app on the same graph (1.00: the harness adds nothing); ours/NNCF: the "
          "folder's int8 graph over NNCF's OpenVINO int8 model, both timed by benchmark_app")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
