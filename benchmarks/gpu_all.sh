#!/usr/bin/env bash
# Every accelerator measurement (issues 9 and 18) in one call, most important first. First, on a
# machine with the package registry, gather the wheels the GPU image lacks:
#   bash benchmarks/gpu_wheels.sh                  # -> .whl (git-ignored)
# then, from the repository root:
#   device run: command "bash benchmarks/gpu_all.sh", carry [".whl"], timeout_s 600
#
# It stops at once with one line (exit 2) when the project does not import: the wheels missing.
# Each section's exit code is recorded; what it measured lands in $OUT (default ./gpu_out) after
# every section, so a call cut short still returns it (7 files): machine.txt (GPU, driver,
# versions), train_step.jsonl (every row, tagged with its section), RESULTS.md (with the rows
# appended), stderr.log, two Perfetto traces, and summary.json (each section's exit code; per
# case step_ms, audio-s/s and MFU; what failed), printed last (benchmarks/gpu_summary.py).
# Exit code 0 when every section exited 0 and no case failed. Sections:
#   1. bf16, stereo 16 x 20 s and mono 16 x 10 s: train (on-the-fly encoder), cached (from
#      encoder features), infer (offline forward), attention (einsum vs fused, share of the step)
#   2. fp32: train, cached, infer
#   3. bf16 with transformer dropout 0 (attention dropout off: the fused path inside training)
#   4. LSTM unroll 8 and 32 (the default is 16), stereo bf16 train
#   5. a jax.profiler trace of the stereo bf16 train and cached steps (top device ops per step)
# BENCH_FLAGS are added to every train_step.py call, BUDGET_S (default 560) bounds the sections,
# PYTHON (default python3) runs them. A CPU dry run (tests/test_gpu_all.py, -m slow):
#   OUT=/tmp/dry BUDGET_S=3000 BENCH_FLAGS="--small --batch=1 --window_s=1 --warmup=1 --steps=1 \
#       --record=false" bash benchmarks/gpu_all.sh
# Afterwards: copy $OUT/RESULTS.md's new rows into benchmarks/RESULTS.md and the figures into
# docs/scaling.md.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
if ls .whl/*.whl >/dev/null 2>&1; then
  if ! $PY -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl
  then
    echo "gpu_all.sh: stopped: the wheels in .whl do not install here (above); gather them again" \
      "with 'bash benchmarks/gpu_wheels.sh'"
    exit 2
  fi
  export PYTHONPATH=$work/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=$work/jax_cache  # sections share compiled steps
if ! err=$($PY -c 'import benchmarks.train_step' 2>&1); then
  echo "gpu_all.sh: stopped: the project does not import here ($(tail -n 1 <<<"$err")):" \
    "gather the wheels the GPU image lacks with 'bash benchmarks/gpu_wheels.sh' on a machine with" \
    "the package registry and carry .whl with the call"
  exit 2
fi
{ command -v nvidia-smi >/dev/null && \
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import jax; from importlib.metadata import version as v
names = "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"
print(", ".join(f"{p} {v(p)}" for p in names))
print(jax.devices())'
  [ -f .whl/MANIFEST ] && echo "wheels: $(tr '\n' ' ' < .whl/MANIFEST)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

section() {  # name, then train_step.py flags; skipped once the deadline is near
  local name=$1; shift
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < 45 )); then
    echo "skip $name: ${left}s left"; printf '%s\tskipped\n' "$name" >> "$work/sections.tsv"; return
  fi
  echo "== $name (${left}s left)"
  # shellcheck disable=SC2086  # BENCH_FLAGS: several flags
  timeout "$left" $PY benchmarks/train_step.py --steps=10 --label="$name" "$@" ${BENCH_FLAGS:-} \
    2>"$work/$name.err" | tee -a "$OUT/train_step.jsonl"
  local rc=${PIPESTATUS[0]}
  echo "rc $rc for $name"
  printf '%s\t%s\n' "$name" "$rc" >> "$work/sections.tsv"
  { echo "== $name (rc $rc)"; grep -v '^I[0-9]' "$work/$name.err" | tail -n 30; } \
    >> "$OUT/stderr.log"
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
  $PY benchmarks/gpu_summary.py "$OUT" "$work/sections.tsv" >/dev/null
}

section bf16 --dtypes=bfloat16
section fp32 --dtypes=float32 --cases=train,cached,infer
section bf16_no_dropout --dtypes=bfloat16 --cases=train,attention \
  --set=model.transformer.dropout=0.0
section unroll8 --kinds=stereo --dtypes=bfloat16 --cases=train --set=model.encoder.unroll=8
section unroll32 --kinds=stereo --dtypes=bfloat16 --cases=train --set=model.encoder.unroll=32
section profile --kinds=stereo --dtypes=bfloat16 --cases=train,cached --steps=3 \
  --profile_dir="$work/profile" --record=false
for case in stereo_bfloat16_train stereo_bfloat16_cached; do
  t=$(find "$work/profile/$case" -name 'perfetto_trace.json.gz' 2>/dev/null | head -1)
  [ -n "$t" ] && [ "$(stat -c %s "$t")" -lt 15000000 ] && cp "$t" "$OUT/$case.perfetto.json.gz"
done
ls -la "$OUT"
$PY benchmarks/gpu_summary.py "$OUT" "$work/sections.tsv"
