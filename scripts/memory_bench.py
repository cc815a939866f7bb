"""Peak memory and wall time of `resnetx export` (int8 calibration) and `resnetx verify` as the image count grows.

Each command runs in its own process; its peak RSS is the kernel's count for that process (wait4's ru_maxrss), so
nothing this script holds is counted. Prints one table and the ratios the memory targets are about: the peak with
the most images over the peak with the fewest (flat memory means a ratio near 1).

    python scripts/memory_bench.py --models resnet18,resnet50 --images 128,512,2048
    python scripts/memory_bench.py --models resnet18 --image-size 64 --verify-samples 1000,10000 --images 128
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """(exit code, peak RSS in MB, seconds) of one command run as a child of this process."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start


def resnetx(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images", default="128,512,2048", help="calibration image counts")
    ap.add_argument("--precision", default="fp32,fp16,int8")
    ap.add_argument("--engine", default="rtx")
    ap.add_argument("--int8-recipe", default="tensorrt")
    ap.add_argument("--calib-data", default="fashion-mnist")
    ap.add_argument("--verify-samples", default="", help="also verify the last folder with these sample counts")
    ap.add_argument("--verify-data", default="fashion-mnist")
    ap.add_argument("--work", type=Path, default=None, help="where the folders go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the folders")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="rx-membench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, int, int, float, float]] = []
    print(f"work folder {work}; logs beside the folders", flush=True)
    for model in a.models.split(","):
        last = None
        for n in [int(v) for v in a.images.split(",")]:
            out = work / f"{model}-{n}"
            cmd = resnetx("export", "--model", model, "--image-size", str(a.image_size), "--precision", a.precision,
                          "--engine", a.engine, "--int8-recipe", a.int8_recipe, "--calib-data", a.calib_data,
                          "--calib-samples", str(n), "--out", str(out), "--force")
            rc, peak, sec = run(cmd, work / f"{model}-{n}.export.log")
            rows.append((model, "export", n, rc, peak, sec))
            print(f"{model} export {n} images: exit {rc}, peak {peak:,.0f} MB, {sec:,.1f} s", flush=True)
            last = out if rc == 0 else last
        for n in [int(v) for v in a.verify_samples.split(",") if v]:
            if last is None:
                break
            cmd = resnetx("verify", str(last), "--data", a.verify_data, "--samples", str(n), "--runtime", "ort")
            rc, peak, sec = run(cmd, work / f"{model}-verify-{n}.log")
            rows.append((model, "verify", n, rc, peak, sec))
            print(f"{model} verify {n} images: exit {rc}, peak {peak:,.0f} MB, {sec:,.1f} s", flush=True)
    print(f"\n| model @{a.image_size} | command | images | exit | peak RSS MB | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for model, what, n, rc, peak, sec in rows:
        print(f"| {model} | {what} | {n} | {rc} | {peak:,.0f} | {sec:,.1f} |")
    for model in a.models.split(","):
        for what in ("export", "verify"):
            done = [(n, peak) for m, w, n, rc, peak, _ in rows if (m, w) == (model, what) and rc == 0]
            if len(done) > 1:
                (n0, p0), (n1, p1) = min(done), max(done)
                print(f"{model} {what}: peak with {n1} images / peak with {n0} = {p1 / p0:.2f}")
    if not a.keep and a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
