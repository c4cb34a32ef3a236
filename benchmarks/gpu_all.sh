#!/usr/bin/env bash
# Every issue-9 measurement on one GPU in one call, most important first; JSON lines and the
# appended RESULTS.md rows land in $OUT (default ./gpu_out) after every section, so a call cut
# short still returns what it measured (6 files: machine.txt, train_step.jsonl, RESULTS.md,
# stderr.log and two Perfetto traces). Run from the repository root:
#
#   device run: command "bash benchmarks/gpu_all.sh", carry [".whl"], timeout_s 600
#
# .whl holds the wheels the GPU image lacks (../shared/device/wheels.sh gathers them all; this
# script needs only ml-collections: `pip download --no-deps ml-collections -d .whl`). Sections:
#   1. bf16, stereo 16 x 20 s and mono 16 x 10 s: train (on-the-fly encoder), cached (from
#      encoder features), infer (offline forward), attention (einsum vs fused, share of the step)
#   2. fp32: train, cached, infer
#   3. bf16 with transformer dropout 0 (attention dropout off: the fused path inside training)
#   4. LSTM unroll 8 and 32 (the default is 16), stereo bf16 train
#   5. a jax.profiler trace of the stereo bf16 train and cached steps (top device ops per step)
# BENCH_FLAGS (e.g. "--small --batch=1 --window_s=1" for a CPU dry run) are added to every call.
# Afterwards: copy $OUT/RESULTS.md's new rows into benchmarks/RESULTS.md and the figures into
# docs/scaling.md.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache  # sections share compiled steps
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import jax, flax; print(jax.__version__, flax.__version__, jax.devices())'
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

section() {  # name, then train_step.py flags; skipped once the deadline is near
  local name=$1; shift
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < 45 )); then echo "skip $name: ${left}s left"; return; fi
  echo "== $name (${left}s left)"
  timeout "$left" python3 benchmarks/train_step.py --steps=10 "$@" ${BENCH_FLAGS:-} 2>"/tmp/$name.err" \
    | tee -a "$OUT/train_step.jsonl"
  echo "rc $? for $name"
  { echo "== $name"; grep -v '^I[0-9]' "/tmp/$name.err" | tail -n 30; } >> "$OUT/stderr.log"
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
}

section bf16 --dtypes=bfloat16
section fp32 --dtypes=float32 --cases=train,cached,infer
section bf16_no_dropout --dtypes=bfloat16 --cases=train,attention \
  --set=model.transformer.dropout=0.0
section unroll8 --kinds=stereo --dtypes=bfloat16 --cases=train --set=model.encoder.unroll=8
section unroll32 --kinds=stereo --dtypes=bfloat16 --cases=train --set=model.encoder.unroll=32
section profile --kinds=stereo --dtypes=bfloat16 --cases=train,cached --steps=3 \
  --profile_dir=/tmp/profile --record=false
for f in /tmp/profile/stereo_bfloat16_train /tmp/profile/stereo_bfloat16_cached; do
  t=$(find "$f" -name 'perfetto_trace.json.gz' 2>/dev/null | head -1)
  [ -n "$t" ] && [ "$(stat -c %s "$t")" -lt 15000000 ] && cp "$t" "$OUT/$(basename "$f").perfetto.json.gz"
done
ls -la "$OUT"
