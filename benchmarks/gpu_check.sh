#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (CuPy, numba-cuda and
# PyTorch installed; no network needed). Steps, each under its own timeout,
# all inside GPU_CHECK_BUDGET seconds (default 500: with the kill grace of
# the last timeout and the summary the whole script stays under 9 minutes):
#   1. environment: nvidia-smi, wheels carried in .whl/ (installed to a
#      private folder on PYTHONPATH), gpudl installed without dependencies
#   2. tests/cuda on the real GPU: every kernel against the CPU reference, then the
#      training and graph tests again with GPUDL_FAST_LAUNCH=1 (the opt-in cheap launch)
#   3. compute-sanitizer memcheck on one short training run
#      (benchmarks/sanitize_step.py); skipped, saying so, if not found
#   4. the benchmark suite: python -m benchmarks --device cuda (groups gemm
#      conv memory train, kernel-version sweeps), JSON + RESULTS-gpu.md
#   5. the step benchmark: python -m benchmarks.graph_step --device cuda
#      (lenet, resnet, MLP: gpudl eager and CUDA graph vs PyTorch eager and
#      CUDA graph, each checked first; gpudl train cuda vs cpu wall time)
#   6. the launch-overhead benchmark (benchmarks/launch_overhead.py, if present)
#   7. the tensor-core GEMM per precision against cuBLAS of the same precision
#      (benchmarks/gemm_precision.py; its correctness tests ran in step 2)
#   8. reduced precision on the ResNet (benchmarks/precision_step.py): its whole step
#      under bf16-mixed vs torch.autocast and fp32 vs fp32, then its 3x3 convolutions
#      per precision vs cuDNN of the same precision, GPUDL_TENSOR_CORES off and on
#   9. the main job, gpudl train --device cuda, if time is left
# and prints a short table last. Everything goes to $OUT (else
# ./gpu-check-out): gpu-check.log (the full log), sanitizer.log, bench.json,
# RESULTS-gpu.md (the entry to append to benchmarks/RESULTS.md), graph-step.json,
# launch.json, gemm-precision.json, precision-step.json, train-gpu.json.
# Knobs: GPU_CHECK_BUDGET, T_INSTALL T_TESTS T_FAST T_SAN T_BENCH T_STEP T_LAUNCH T_MMA T_PREC
# T_TRAIN (seconds), MMA_SIZES ("1024 2048 4096 8192"),
# PREC_ARGS ("--step-batch 64 256 --conv-batch 64": precision_step's cases),
# GPU_CHECK_GROUPS ("gemm conv memory train"), GPU_CHECK_WORKERS (pytest -n, 0 = off),
# GPU_CHECK_CPU=1 (also the CPU test suite), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-500}
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GPUDL_RESULTS_MD="$OUT/RESULTS-gpu.md"
PY=${PYTHON:-python3}
export GPUDL_COMMIT=${GPUDL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
status=0
step() { echo; echo "=== $1 ($(( SECONDS - START )) s of $BUDGET)"; }
# seconds for a step: its own limit, or what is left of the budget less a reserve for later steps
limit() { local want=$1 left=$(( BUDGET - (SECONDS - START) - ${2:-0} )); (( left < want )) && want=$left; echo $(( want > 1 ? want : 1 )); }
rcword() { case "$1" in 0) echo "${2:-pass}";; 124|137) echo "TIMEOUT";; skipped*|unsupported*|clean*) echo "$1";; *) echo "FAIL: $1";; esac; }

main() {
step "environment"
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (e.g. numpy 2.4 for numba-cuda 0.30)
  timeout $(limit ${T_INSTALL:-60}) $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/gpu-check-site .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
timeout $(limit ${T_INSTALL:-60}) $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
timeout $(limit 60 300) $PY -m gpudl.cli info 2>&1
timeout 30 $PY - <<'EOF'
import numpy
from importlib import metadata
try:
    nc = metadata.version("numba-cuda")
except metadata.PackageNotFoundError:
    nc = "none"
print(f"numpy {numpy.__version__} from {numpy.__file__}; numba-cuda {nc}")
if tuple(map(int, numpy.__version__.split(".")[:2])) >= (2, 5) and nc.startswith("0.30"):
    print("WARNING: numba-cuda 0.30 fails to compile kernels under NumPy >= 2.5; carry a "
          "numpy 2.4 wheel in .whl/ (see README, Benchmarks)")
EOF

step "tests on the real GPU: every kernel against the CPU reference (tests/cuda)"
XDIST=()
if [ "${GPU_CHECK_WORKERS:-8}" != 0 ] && $PY -c "import xdist" 2>/dev/null; then XDIST=(-n "${GPU_CHECK_WORKERS:-8}"); fi
timeout -k 10 $(limit ${T_TESTS:-170} 150) $PY -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests/cuda 2>&1 \
  | tee /tmp/gpu-check-tests.log | tail -25
gpu_rc=${PIPESTATUS[0]}
# every test skipped means no GPU was seen: that is a failure here
[ "$gpu_rc" = 0 ] && ! tail -1 /tmp/gpu-check-tests.log | grep -q " passed" && gpu_rc="no test ran on a GPU"
[ "$gpu_rc" = 0 ] || status=1
fast_rc=skipped
T=$(limit ${T_FAST:-60} 180)
if (( T >= 30 )); then  # the opt-in cheap launch (gpudl/backend/fastlaunch.py) on the training paths
  echo "--- GPUDL_FAST_LAUNCH=1: training-step, zoo-step and graph-replay tests"
  GPUDL_FAST_LAUNCH=1 timeout -k 10 $T $PY -m pytest -q -p no:cacheprovider "${XDIST[@]}" \
    tests/cuda/test_training_step.py tests/cuda/test_zoo_step.py tests/cuda/test_graph_replay.py 2>&1 | tail -8
  fast_rc=${PIPESTATUS[0]}; [ "$fast_rc" = 0 ] || status=1
fi
cpu_rc=skipped
if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then  # CI runs the CPU suite; here only on request
  timeout -k 10 $(limit 300 150) $PY -m pytest -q -p no:cacheprovider tests --ignore=tests/cuda 2>&1 | tail -5
  cpu_rc=${PIPESTATUS[0]}; [ "$cpu_rc" = 0 ] || status=1
fi

step "compute-sanitizer memcheck on one short training run (benchmarks/sanitize_step.py)"
SAN=$(command -v compute-sanitizer 2>/dev/null)
[ -n "$SAN" ] || SAN=$(ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer \
  /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
[ -n "$SAN" ] || SAN=$($PY -c "
import os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
for r in roots:
    for d, _, fs in os.walk(r):
        if 'compute-sanitizer' in fs and os.access(os.path.join(d, 'compute-sanitizer'), os.X_OK):
            print(os.path.join(d, 'compute-sanitizer')); raise SystemExit
" 2>/dev/null)
T=$(limit ${T_SAN:-90} 120)
if [ -z "$SAN" ]; then
  echo "compute-sanitizer not found (PATH, /usr/local/cuda*/bin, nvidia pip packages): memcheck SKIPPED"
  san_rc="skipped (not found)"
elif (( T < 20 )); then
  echo "memcheck SKIPPED: out of time"; san_rc="skipped (time)"
else
  echo "$SAN"
  # CuPy's pool off (in sanitize_step), so each array is its own allocation;
  # --target-processes all in case numba or CuPy start helpers.
  timeout -k 10 $T "$SAN" --tool memcheck --target-processes all --error-exitcode 3 --print-limit 50 \
    --log-file "$OUT/sanitizer.log" $PY -m benchmarks.sanitize_step 2>&1 | tail -6
  san_rc=${PIPESTATUS[0]}
  grep -E "ERROR SUMMARY|Device not supported|Invalid|rror:" "$OUT/sanitizer.log" | head -12
  if grep -q "Device not supported" "$OUT/sanitizer.log" 2>/dev/null; then
    san_rc="unsupported on this machine"
  elif [ "$san_rc" = 0 ] && grep -q "ERROR SUMMARY: 0 errors" "$OUT/sanitizer.log"; then
    san_rc="clean (0 errors)"
  else
    status=1
  fi
fi

step "benchmarks: python -m benchmarks --device cuda"
# reserve: 30 s for the step benchmark, 15 for launch overhead, 15 for the main job
T=$(limit ${T_BENCH:-240} 60)
GROUPS_=${GPU_CHECK_GROUPS:-gemm conv memory train}
if (( T < 40 )); then
  echo "benchmarks SKIPPED: out of time"; bench_rc="skipped (time)"
else
  # --budget: cases not started 20 s before the hard limit are reported as skipped
  timeout -k 10 $T $PY -m benchmarks --device cuda --groups $GROUPS_ --budget $(( T - 20 )) \
    --json "$OUT/bench.json" 2>&1 | grep -v '^    baseline' | tail -120
  bench_rc=${PIPESTATUS[0]}; [ "$bench_rc" = 0 ] || status=1
fi

step "step benchmark: python -m benchmarks.graph_step --device cuda"
T=$(limit ${T_STEP:-90} 35)
if (( T < 30 )); then
  echo "step benchmark SKIPPED: out of time"; gstep_rc="skipped (time)"
else
  # --budget: cases not started 15 s before the hard limit are reported as
  # skipped; the gpudl train cuda/cpu runs at its end get what is left
  timeout -k 10 $T $PY -m benchmarks.graph_step --device cuda --budget $(( T - 15 )) \
    --json "$OUT/graph-step.json" 2>&1 | tail -40
  gstep_rc=${PIPESTATUS[0]}; [ "$gstep_rc" = 0 ] || status=1
fi

step "launch overhead: python -m benchmarks.launch_overhead"
if [ ! -f benchmarks/launch_overhead.py ]; then
  echo "benchmarks/launch_overhead.py not in this tree: SKIPPED"; launch_rc="skipped (not in tree)"
else
  T=$(limit ${T_LAUNCH:-45} 20)
  if (( T < 15 )); then
    echo "launch overhead SKIPPED: out of time"; launch_rc="skipped (time)"
  else
    timeout -k 5 $T $PY -m benchmarks.launch_overhead --json "$OUT/launch.json" 2>&1 | tail -30
    launch_rc=${PIPESTATUS[0]}; [ "$launch_rc" = 0 ] || status=1
  fi
fi

step "tensor-core GEMM: python -m benchmarks.gemm_precision (TF32, BF16, FP16 vs cuBLAS)"
T=$(limit ${T_MMA:-60} 50)
if (( T < 20 )); then
  echo "tensor-core GEMM benchmark SKIPPED: out of time"; mma_rc="skipped (time)"
else
  # each case is checked against FP32 cuBLAS before it is timed; a wrong result fails the step
  timeout -k 5 $T $PY -m benchmarks.gemm_precision --sizes ${MMA_SIZES:-1024 2048 4096 8192} \
    --json "$OUT/gemm-precision.json" 2>&1 | tail -25
  mma_rc=${PIPESTATUS[0]}; [ "$mma_rc" = 0 ] || status=1
fi

step "precision: python -m benchmarks.precision_step (ResNet step and 3x3 convs vs PyTorch)"
T=$(limit ${T_PREC:-60} 20)
if (( T < 30 )); then
  echo "precision benchmark SKIPPED: out of time"; prec_rc="skipped (time)"
else
  # the step first: bf16-mixed against autocast is the headline, and it compiles the conv
  # kernels the per-op part reuses. Each case is checked before it is timed (a wrong one
  # fails the step); --budget: cases not started 15 s before the hard limit are skipped
  timeout -k 5 $T $PY -m benchmarks.precision_step --device cuda --parts step conv \
    ${PREC_ARGS:---step-batch 64 256 --conv-batch 64} --budget $(( T - 15 )) \
    --json "$OUT/precision-step.json" 2>&1 | tail -100
  prec_rc=${PIPESTATUS[0]}; [ "$prec_rc" = 0 ] || status=1
fi

step "streaming data: python -m benchmarks.streaming --device cuda (plain, then pinned uploads)"
stream_rc=skipped
T=$(limit ${T_STREAM:-60} 35)
if (( T >= 30 )); then
  timeout -k 10 $(( T / 2 )) $PY -m benchmarks.streaming --device cuda --samples 4096 --repeat 2 \
    --json "$OUT/streaming.json" 2>&1 | tail -14
  stream_rc=${PIPESTATUS[0]}
  GPUDL_PINNED_UPLOAD=1 timeout -k 10 $(( T / 2 )) $PY -m benchmarks.streaming --device cuda \
    --samples 4096 --repeat 2 --json "$OUT/streaming-pinned.json" 2>&1 | tail -14
  pinned_rc=${PIPESTATUS[0]}; [ "$pinned_rc" = 0 ] || stream_rc="pinned: $pinned_rc"
  [ "$stream_rc" = 0 ] || status=1
fi

step "main job on the GPU: gpudl train --device cuda"
T=$(limit ${T_TRAIN:-45} 0)
if (( T < 20 )); then
  echo "SKIPPED: out of time"; train_rc="skipped (time)"
else
  timeout -k 5 $T $PY -m gpudl.cli train --device cuda --quiet --save "" --metrics-out "$OUT/train-gpu.json" 2>&1 | tail -4
  train_rc=${PIPESTATUS[0]}; [ "$train_rc" = 0 ] || status=1
fi

step "summary"
printf '%-34s %s\n' "GPU tests (tests/cuda)" "$(rcword "$gpu_rc")" \
  "GPU tests, GPUDL_FAST_LAUNCH=1" "$(rcword "$fast_rc")" \
  "CPU suite" "$(rcword "$cpu_rc")" \
  "memcheck (short training run)" "$(rcword "$san_rc")" \
  "benchmarks (python -m benchmarks)" "$(rcword "$bench_rc" ok)" \
  "step benchmark (graph_step)" "$(rcword "$gstep_rc" ok)" \
  "launch overhead" "$(rcword "$launch_rc" ok)" \
  "tensor-core GEMM (gemm_precision)" "$(rcword "$mma_rc" ok)" \
  "precision (precision_step)" "$(rcword "$prec_rc" ok)" \
  "streaming (plain, pinned uploads)" "$(rcword "$stream_rc" ok)" \
  "gpudl train --device cuda" "$(rcword "$train_rc")"
[ -f "$OUT/train-gpu.json" ] && $PY -c "import json;m=json.load(open('$OUT/train-gpu.json'));print(f\"train: test accuracy {m['test_accuracy']:.4f} in {m['seconds']:.1f} s on {m['device_name']}\")"
[ -f "$OUT/bench.json" ] && $PY -m benchmarks.summary "$OUT/bench.json"
[ -f "$OUT/graph-step.json" ] && $PY -c "
import json
d = json.load(open('$OUT/graph-step.json'))
for r in d['rows']:  # model, batch, 4 times, 3 ratios (gpudl/torch time)
    print(f'step {r[0]} b{r[1]}: ms gpudl eager {r[2]} graph {r[3]}, torch eager {r[4]} graph {r[5]}; '
          f'gpudl graph/torch eager {r[6]}, /torch graph {r[7]}, gpudl eager/torch eager {r[8]}')
t, s = d.get('train') or {}, lambda v: f'{v:.1f} s' if isinstance(v, float) else v
print(f\"gpudl train on digits, wall: --device cuda {s(t.get('cuda'))}, cpu {s(t.get('cpu'))}\")"
[ -f "$OUT/precision-step.json" ] && $PY -c "
import json
d = json.load(open('$OUT/precision-step.json'))
for r in (d.get('step') or {}).get('rows', []):  # batch, policy, TC, gpudl ms, torch ms, torch/gpudl
    print(f'precision step b{r[0]} {r[1]} TC {r[2]}: ms gpudl {r[3]}, torch {r[4]}; torch/gpudl {r[5]}')"
echo "total $(( SECONDS - START )) s; logs in $OUT"
return $status
}

main 2>&1 | tee -a "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
