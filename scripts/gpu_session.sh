#!/usr/bin/env bash
# The GPU checks of issues #5 (verify) and #7 (bench) in a few commands on a CUDA machine.
#
#   scripts/gpu_session.sh check     what is installed (torch/CUDA, onnxruntime providers, ...)
#   scripts/gpu_session.sh tests     pytest -m gpu, and the torchvision parity test
#   scripts/gpu_session.sh verify    ResNet-50 fp32+fp16 export; verify ort and torch on cuda vs the CPU reference
#   scripts/gpu_session.sh bench     ResNet-50 fp16, batch 1 and 256: torch eager, channels_last + CUDA graph, ort CUDA
#   scripts/gpu_session.sh compile_fast     torch.compile mode default + CUDA graph, batch 1 and 256 (about a minute)
#   scripts/gpu_session.sh compile256       max-autotune at batch 256 (minutes; cached in the folder)
#   scripts/gpu_session.sh compile1         max-autotune at batch 1 (minutes; cached in the folder)
#   scripts/gpu_session.sh compile_cached   max-autotune at 1 and 256 in a new process: the compile time with the cache
#
# Each stage fits one device call (10 minutes): a stage is cut at 9 minutes (STAGE_LIMIT) with its table so far.
#
# A session with 30 minutes of device time cannot run every stage: in this order, most needed first,
#   1. the staging calls. Here, once:  ../shared/gpu/stage.sh $(scripts/gpu_session.sh wheels)
#      (onnxruntime-gpu for the CUDA provider; onnxconverter-common for the fp16 export; pytest and
#      hypothesis, which the test modules import, in case the image lacks them: 5 folders, c0..c4);
#      then one device call per folder, the last one ending in
#      `bash .gpu/c4/assemble.sh install && export PYTHONPATH=/tmp/site:$PWD && scripts/gpu_session.sh check tests`
#   2. verify       (issue #5: ort-cuda and torch-cuda fp16 against the CPU reference)
#   3. bench        (issue #7: eager, CUDA graph, ort CUDA, transfers)
#   4. compile256, then compile_cached (issue #7: the 22,000 img/s bar at batch 256, and its cached compile)
#   5. compile_fast, compile1 only with time to spare (the batch-1 bar is met or missed by `bench` already).
# Every call after staging starts with `export PYTHONPATH=/tmp/site:$PWD`; calls must follow each other
# within the machine's 30 s idle release, or /tmp (the staged wheel, /tmp/r50) is gone.
#
# Run each stage in its own device call, back to back (the machine keeps /tmp between calls only while
# it stays warm); `verify` comes before `bench` and `compile` (they reuse /tmp/r50). Results go to $OUT (default /tmp/gpu_out): the terminal
# tables, verify.json, bench-*.json/md. For onnxruntime's CUDA provider, stage the onnxruntime-gpu
# wheel first (../shared/gpu/stage.sh) and export PYTHONPATH=/tmp/site:$PWD.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
R50=${R50:-/tmp/r50}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD
PY=${PY:-python3}

stage_check() {
  nvidia-smi | tee "$OUT/nvidia-smi.txt"
  "$PY" - <<'EOF' | tee "$OUT/env.txt"
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "onnxconverter_common", "typer", "rich",
             "matplotlib", "pytest", "tensorrt", "tensorrt_rtx"):
    try:
        m = importlib.import_module(name)
        print(f"{name:22s} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name:22s} MISSING ({type(e).__name__})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import onnxruntime as ort
    print("ort providers", ort.get_available_providers())
except Exception:
    pass
EOF
}

stage_tests() {
  timeout 400 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/pytest-gpu.txt"
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_models.py -k torchvision 2>&1 \
    | tee "$OUT/pytest-torchvision.txt"
}

exporter() { "$PY" -c "import onnxscript" 2>/dev/null && echo dynamo || echo legacy; }

stage_verify() {
  timeout 240 "$PY" -m pipeline.cli export --model resnet50 --precision fp32,fp16 --exporter "$(exporter)" \
    --out "$R50" 2>&1 | tee "$OUT/export.txt"
  timeout 300 "$PY" -m pipeline.cli verify "$R50" --device cuda --runtime ort,torch 2>&1 | tee "$OUT/verify-cuda.txt"
  cp "$R50/reports/verify.json" "$OUT/verify-cuda.json"
}

bench_as() {  # bench_as NAME ARGS...: one bench run, its reports kept under NAME (later --batch wins)
  local name=$1; shift
  rm -f "$R50/reports/bench.json" "$R50/reports/bench.md"  # never keep an older run's report under NAME
  timeout "${STAGE_LIMIT:-540}" "$PY" -m pipeline.cli bench "$R50" --device cuda --precision fp16 --batch 1,256 \
    --iters 200 --min-seconds 3 --no-accuracy --peak-tflops 725 "$@" \
    2>&1 | tee "$OUT/bench-$name.txt"
  [ -f "$R50/reports/bench.json" ] && cp "$R50/reports/bench.json" "$OUT/bench-$name.json"
  [ -f "$R50/reports/bench.md" ] && cp "$R50/reports/bench.md" "$OUT/bench-$name.md"
  return 0
}

stage_bench() {
  local STAGE_LIMIT=140  # four runs in one 10-minute call
  bench_as eager --runtime torch,ort
  bench_as graph --runtime torch --channels-last --cuda-graph
  bench_as ort-nhwc --runtime ort --prefer-nhwc
  bench_as transfers --runtime torch --channels-last --cuda-graph --include-transfers
}

compiled() { bench_as "$@" --runtime torch --channels-last --compile --cuda-graph --iters 100; }

stage_compile_fast() { compiled compile-default --compile-mode default; }
stage_compile256() { compiled compile-256 --batch 256; }  # max-autotune: minutes; graphs land in $R50/inductor_cache
stage_compile1() { compiled compile-1 --batch 1; }
stage_compile_cached() { compiled compile-cached; }  # a fresh process at 1 and 256: the folder's cache should make it seconds

# what the GPU image may lack (its pip list: torch 2.11, onnx 1.23, onnxruntime 1.30 CPU, onnxscript, no
# onnxconverter-common or pytest seen); staged with --no-deps, so their own dependencies are listed too
WHEELS="onnxruntime-gpu==1.31.1 onnxslim onnxconverter-common pytest pluggy iniconfig hypothesis sortedcontainers attrs"

[ $# -gt 0 ] || set -- check
[ "$1" = wheels ] && { echo "$WHEELS"; exit 0; }
for s in "$@"; do
  case $s in
    check|tests|verify|bench|compile_fast|compile256|compile1|compile_cached) "stage_$s" ;;
    *) echo "unknown stage $s (check, tests, verify, bench, compile_fast, compile256, compile1, compile_cached)"; exit 2 ;;
  esac
done
