"""The whole GPU check list in one run on a CUDA machine, in at most --budget seconds (default 540).

    python3 scripts/gpu_check.py --out /tmp/gpu_out            # on a CUDA GPU
    python3 scripts/gpu_check.py --dry-run --out /tmp/dry      # the same plan on a CPU, default model, ~2 minutes
    python3 scripts/gpu_check.py --wheels                      # what to install first on a machine without them

Stages, most needed first; each has its own time limit and writes its tables and JSON to --out as it goes, so a
run cut off still leaves what finished (summary.json says which stage did what):

1. env: nvidia-smi, library versions, GPU name, driver, clocks, and the peak fp16 matmul TFLOP/s measured
2. tests: pytest -m gpu and the torchvision parity test
3. verify: ResNet-50 fp32 and fp16 export; torch-cuda fp32 and fp16 against the CPU reference
4. bench: ResNet-50 fp16 at batch 1 and 256: torch eager, channels_last + CUDA graph, torch.compile (mode
   default): latency and the throughput column, % of the peak from stage 1
5. compile: torch.compile max-autotune at batch 256, cached in the folder, then the cached re-run
6. fleet: `resnetx fleet` on a local one-node Ray instance with this GPU as its kind (needs `ray[default]`;
   without it the stage records exit 3 and the pip line)
The repository root is put on PYTHONPATH: nothing needs installing but what `--wheels` lists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = "onnxconverter-common"  # the fp16 export's converter; everything else is on the GPU image


class Run:
    """The stages' shared clock, output folder and summary."""

    def __init__(self, out: Path, budget: float, dry: bool) -> None:
        self.out, self.dry, self.deadline = out, dry, time.monotonic() + budget
        self.summary: dict[str, dict] = {}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sh(self, stage: str, name: str, args: list[str], limit: float) -> int:
        """Run one command with the time left (at most `limit`), its output kept in OUT/<name>.txt."""
        timeout = max(1.0, min(limit, self.left()))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        start = time.monotonic()
        try:
            r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            rc, text = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            rc = 124
            text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            text += f"\n[cut off after {timeout:.0f} s]"
        (self.out / f"{name}.txt").write_text(" ".join(args) + "\n\n" + text)
        self.summary.setdefault(stage, {})[name] = {"rc": rc, "seconds": round(time.monotonic() - start, 1)}
        self.save()
        return rc

    def cli(self, stage: str, name: str, args: list[str], limit: float) -> int:
        return self.sh(stage, name, [sys.executable, "-m", "pipeline.cli", *args], limit)

    def save(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")


PEAK = r"""
import json, time, torch
if not torch.cuda.is_available():
    print(json.dumps({"peak_fp16_tflops": None, "gpu": None})); raise SystemExit
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.float16); b = torch.randn(n, n, device="cuda", dtype=torch.float16)
for _ in range(3): a @ b
torch.cuda.synchronize(); start, k = time.perf_counter(), 0
while time.perf_counter() - start < 3.0:
    for _ in range(10): a @ b
    torch.cuda.synchronize(); k += 10
secs = time.perf_counter() - start
p = torch.cuda.get_device_properties(0)
print(json.dumps({"peak_fp16_tflops": round(2 * n ** 3 * k / secs / 1e12, 1), "gpu": p.name,
                  "compute_capability": f"{p.major}.{p.minor}", "memory_gb": round(p.total_memory / 2**30, 1)}))
"""


def stage_env(r: Run) -> float | None:
    if not r.dry:
        r.sh("env", "nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                   "clocks.mem,power.limit,memory.total", "--format=csv"], 20)
    r.cli("env", "info", ["info"], 60)
    r.sh("env", "peak", [sys.executable, "-c", PEAK], 60)
    try:
        last = (r.out / "peak.txt").read_text().strip().splitlines()[-1]
        peak = json.loads(last)["peak_fp16_tflops"]
    except (OSError, ValueError, KeyError, IndexError):
        peak = None
    r.summary["env"]["peak_fp16_tflops"] = peak
    r.save()
    return peak


def stage_tests(r: Run) -> None:
    r.sh("tests", "pytest-gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                 "-o", "addopts="], 240)
    r.sh("tests", "pytest-torchvision", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                                         "addopts=", "tests/test_models.py", "-k", "torchvision"], 120)


def stage_verify(r: Run, folder: Path) -> None:
    model = ["--model", "default"] if r.dry else ["--model", "resnet50"]
    r.cli("verify", "export", ["export", *model, "--precision", "fp32,fp16", "--out", str(folder),
                               "--reference-samples", "64"], 240)
    device = "cpu" if r.dry else "cuda"
    r.cli("verify", "verify", ["verify", str(folder), "--device", device, "--runtime", "torch", "--samples", "64"],
          240)
    _keep(_kind_report(folder, "verify.json"), r.out / "verify.json")


def _kind_report(folder: Path, name: str) -> Path:
    """reports/<kind>/NAME of this machine (its GPU kind, or cpu on a dry run): the newest such file."""
    found = sorted((folder / "reports").glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else folder / "reports" / name


def _keep(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.write_bytes(src.read_bytes())


def _bench(r: Run, stage: str, folder: Path, name: str, extra: list[str], limit: float, peak: float | None) -> None:
    device, batches = ("cpu", "1,8") if r.dry else ("cuda", "1,256")
    args = ["bench", str(folder), "--device", device, "--runtime", "torch", "--precision",
            "fp32" if r.dry else "fp16", "--batch", batches, "--no-accuracy", "--iters", "20" if r.dry else "200",
            "--min-seconds", "0.5" if r.dry else "3", "--warmup-seconds", "0.2" if r.dry else "1", *extra]
    if peak:
        args += ["--peak-tflops", str(peak)]
    for f in ("bench.json", "bench.md"):
        for old in (folder / "reports").glob(f"*/{f}"):
            old.unlink()  # never keep an older run's report under this name
    r.cli(stage, name, args, limit)
    for f in ("bench.json", "bench.md"):
        _keep(_kind_report(folder, f), r.out / f"{name}.{f.split('.')[1]}")


def stage_bench(r: Run, folder: Path, peak: float | None) -> None:
    _bench(r, "bench", folder, "bench-eager", [], 90, peak)
    graph = [] if r.dry else ["--channels-last", "--cuda-graph"]
    _bench(r, "bench", folder, "bench-graph", graph or ["--channels-last"], 90, peak)
    _bench(r, "bench", folder, "bench-compile", ["--compile", "--compile-mode", "default"], 180, peak)


def stage_compile(r: Run, folder: Path, peak: float | None) -> None:
    """max-autotune at one batch (the last --batch wins over _bench's), then again with the folder's cache."""
    extra = ["--compile", "--compile-mode", "default" if r.dry else "max-autotune", "--batch", "8" if r.dry else "256"]
    _bench(r, "compile", folder, "compile-autotune", extra, 360, peak)
    _bench(r, "compile", folder, "compile-cached", extra, 120, peak)


def stage_fleet(r: Run, folder: Path) -> None:
    """The fleet path on real hardware: this machine as a one-node Ray cluster, its GPU the kind."""
    batches = "1,8" if r.dry else "1,256"
    r.cli("fleet", "fleet", ["fleet", str(folder), "--samples", "64", "--batch", batches, "--iters", "20",
                             "--min-seconds", "0.5", "--kind-timeout", "240", "--force"], 300)
    _keep(folder / "reports" / "fleet.md", r.out / "fleet.md")
    _keep(folder / "reports" / "fleet.json", r.out / "fleet.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/gpu_out"))
    ap.add_argument("--budget", type=float, default=540.0, help="Seconds for the whole run (default 540).")
    ap.add_argument("--dry-run", action="store_true", help="The same plan on a CPU with the default model.")
    ap.add_argument("--wheels", action="store_true", help="Print the wheels to install first, and exit.")
    ap.add_argument("--stages", default="env,tests,verify,bench,compile,fleet")
    a = ap.parse_args()
    if a.wheels:
        print(WHEELS)
        return
    r = Run(a.out, a.budget, a.dry_run)
    folder = a.out / ("default" if a.dry_run else "r50")
    stages = a.stages.split(",")
    peak = stage_env(r) if "env" in stages else None
    # (stage, the seconds it needs at least to be worth starting)
    for name, need, fn in (("tests", 30, lambda: stage_tests(r)), ("verify", 60, lambda: stage_verify(r, folder)),
                           ("bench", 60, lambda: stage_bench(r, folder, peak)),
                           ("compile", 120, lambda: stage_compile(r, folder, peak)),
                           ("fleet", 60, lambda: stage_fleet(r, folder))):
        if name not in stages:
            continue
        if r.left() < need:
            r.summary[name] = {"skipped": f"{r.left():.0f} s left, it needs {need}"}
            r.save()
            continue
        fn()
    print(json.dumps(r.summary, indent=1))


if __name__ == "__main__":
    main()
