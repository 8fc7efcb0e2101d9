#!/usr/bin/env bash
# Benchmarks for a machine with a GPU (issue 16): `deno task bench` on the webgpu backend and on
# the CPU backends for bench-small and the larger shape (d_model 512, 6+6 layers, batch 64),
# plus bench/pytorch_bench.py on CUDA when python3 has torch with CUDA. One JSON line per
# measurement goes to stdout and to $OUT/gpu_bench.jsonl (OUT defaults to runs/gpu_bench);
# failures are recorded as {"error": ...} lines and the script goes on.
#
#   bash bench/gpu.sh [--seconds S]          (S: seconds per phase, default 5)
#
# Needs deno on PATH and a Vulkan driver for the GPU (NVIDIA: libvulkan1 and, in a container,
# NVIDIA_DRIVER_CAPABILITIES including graphics; see README "GPU (WebGPU)").
set -u
cd "$(dirname "$0")/.."
SECONDS_PER_PHASE=5
if [ "${1:-}" = "--seconds" ] && [ -n "${2:-}" ]; then SECONDS_PER_PHASE=$2; fi
OUT=${OUT:-runs/gpu_bench}
mkdir -p "$OUT"
LOG="$OUT/gpu_bench.jsonl"
: >"$LOG"

record() { # label, then the command; appends its last JSON line (or an error) tagged by label
  local label=$1
  shift
  local out
  out=$("$@" 2>"$OUT/$label.stderr")
  local code=$?
  local line
  line=$(printf '%s\n' "$out" | grep '^{' | tail -n 1)
  if [ $code -ne 0 ] || [ -z "$line" ]; then
    line="{\"error\": \"exit $code, see $OUT/$label.stderr\"}"
  fi
  printf '{"run": "%s", "result": %s}\n' "$label" "$line" | tee -a "$LOG"
}

{
  date -u
  uname -a
  nproc
  deno --version | head -n 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
    echo "nvidia-smi: none"
  ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null
} | tee "$OUT/machine.txt"

for shape in small large; do
  record "webgpu_$shape" deno task bench --backend webgpu --shape "$shape" --model-only \
    --seconds "$SECONDS_PER_PHASE" --json
  record "blas_${shape}_1thread" deno task bench --backend blas --shape "$shape" --model-only \
    --seconds "$SECONDS_PER_PHASE" --json
  record "blas_${shape}_allcores" deno task bench --backend blas --threads 0 --shape "$shape" \
    --model-only --seconds "$SECONDS_PER_PHASE" --json
  record "wasm_$shape" deno task bench --backend wasm --shape "$shape" --model-only \
    --seconds "$SECONDS_PER_PHASE" --json
done

PY=${PYTHON:-python3}
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for shape in small large; do
    record "pytorch_cuda_$shape" "$PY" bench/pytorch_bench.py --device cuda --threads 0 \
      --shape "$shape" --seconds "$SECONDS_PER_PHASE"
  done
else
  echo '{"run": "pytorch_cuda", "result": {"error": "no torch with CUDA in '"$PY"'"}}' |
    tee -a "$LOG"
fi
echo "results: $LOG"
