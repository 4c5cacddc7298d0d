#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (and CuPy, numba-cuda,
# PyTorch installed): installs gpudl without dependencies, runs the test
# suite on the real GPU, the GPU benchmarks, and prints a short table last.
# Full logs go to $OUT when it is set (else ./gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GPUDL_RESULTS_MD="$OUT/RESULTS-gpu.md"
PY=${PYTHON:-python3}
export GPUDL_COMMIT=${GPUDL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
status=0
step() { echo; echo "=== $1"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/env.txt"
$PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
$PY -m gpudl.cli info 2>&1 | tee -a "$OUT/env.txt"

step "tests on the real GPU: every kernel against the NumPy reference (tests/cuda)"
timeout ${T_TESTS:-300} $PY -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tee "$OUT/tests-gpu.log" | tail -15
gpu_rc=${PIPESTATUS[0]}; [ "$gpu_rc" = 0 ] || status=1
cpu_rc=skipped
if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then  # CI runs the CPU suite; here only on request
  $PY -m pytest -q -p no:cacheprovider tests --ignore=tests/cuda 2>&1 | tee "$OUT/tests-cpu.log" | tail -3
  cpu_rc=${PIPESTATUS[0]}; [ "$cpu_rc" = 0 ] || status=1
fi

step "main job on the GPU"
timeout ${T_TRAIN:-120} $PY -m gpudl.cli train --device cuda --quiet --save "" --metrics-out "$OUT/train-gpu.json" 2>&1 | tail -4
train_rc=${PIPESTATUS[0]}; [ "$train_rc" = 0 ] || status=1

step "benchmarks"
BENCH=${GPU_CHECK_BENCH:-matmul dense conv poolbn step}  # a subset for a short lease, e.g. "dense"
mm_rc=skipped dense_rc=skipped conv_rc=skipped poolbn_rc=skipped step_rc=skipped
if [[ " $BENCH " == *" matmul "* ]]; then
  timeout ${T_MM:-180} $PY -m benchmarks.matmul --json "$OUT/matmul.json" 2>&1 | tee "$OUT/bench-matmul.log" | tail -25
  mm_rc=${PIPESTATUS[0]}
fi
if [[ " $BENCH " == *" dense "* ]]; then
  timeout ${T_DENSE:-90} $PY -m benchmarks.dense_step --device cuda --batch 1024 --json "$OUT/dense-gpu.json" 2>&1 | tee "$OUT/bench-dense.log" | tail -12
  dense_rc=${PIPESTATUS[0]}
fi
if [[ " $BENCH " == *" conv "* ]]; then
  timeout ${T_CONV:-120} $PY -m benchmarks.conv --device cuda --json "$OUT/conv-gpu.json" 2>&1 | tee "$OUT/bench-conv.log" | tail -14
  conv_rc=${PIPESTATUS[0]}
  timeout ${T_CONV:-120} $PY -m benchmarks.conv_versions --json "$OUT/conv-versions.json" 2>&1 | tee "$OUT/bench-conv-versions.log" | tail -10
  [ "${PIPESTATUS[0]}" = 0 ] || conv_rc="versions FAIL"
fi
if [[ " $BENCH " == *" poolbn "* ]]; then
  timeout ${T_POOLBN:-90} $PY -m benchmarks.pool_bn --device cuda --json "$OUT/poolbn-gpu.json" 2>&1 | tee "$OUT/bench-poolbn.log" | tail -28
  poolbn_rc=${PIPESTATUS[0]}
fi
if [[ " $BENCH " == *" step "* ]]; then
  timeout ${T_STEP:-90} $PY -m benchmarks.model_step --device cuda --json "$OUT/step-gpu.json" 2>&1 | tee "$OUT/bench-step.log" | grep -v '^  ' | tail -14
  step_rc=${PIPESTATUS[0]}
fi

step "summary"
printf '%-28s %s\n' "GPU tests (tests/cuda)" "$( [ "$gpu_rc" = 0 ] && echo pass || echo "FAIL ($gpu_rc)")" \
  "CPU suite" "$( [ "$cpu_rc" = 0 ] && echo pass || echo "$cpu_rc")" \
  "gpudl train --device cuda" "$( [ "$train_rc" = 0 ] && echo pass || echo "FAIL ($train_rc)")" \
  "matmul benchmark" "$( [ "$mm_rc" = 0 ] && echo ok || echo "$mm_rc")" \
  "dense-step benchmark" "$( [ "$dense_rc" = 0 ] && echo ok || echo "$dense_rc")" \
  "conv benchmark" "$( [ "$conv_rc" = 0 ] && echo ok || echo "$conv_rc")" \
  "pool/batch-norm benchmark" "$( [ "$poolbn_rc" = 0 ] && echo ok || echo "$poolbn_rc")" \
  "model-step benchmark" "$( [ "$step_rc" = 0 ] && echo ok || echo "$step_rc")"
[ -f "$OUT/train-gpu.json" ] && $PY -c "import json;m=json.load(open('$OUT/train-gpu.json'));print(f\"train: test accuracy {m['test_accuracy']:.4f} in {m['seconds']:.1f} s on {m['device_name']}\")"
[ -f "$OUT/matmul.json" ] && $PY - "$OUT/matmul.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["rows"]:
    print(f"{row[0]:>5} {row[1]} {row[2]:<22} {row[3]:>9} ms {row[4]:>7} TFLOP/s  cuBLAS/ours {row[5]}")
PYEOF
exit $status
