#!/usr/bin/env bash
# The converged-source protocol of docs/results.md (issue 20) with its fine-tunes on one lent GPU: on this
# project's 2-core CPU machine each 1 800-step ULCA fine-tune takes ~1 h 20 min; on an H200 the six
# fine-tunes of ulca_st_jitter and full ULCA over three seeds took ~10 min, run six at a time.
#
#   bash bench/synthetic_benchmark_gpu.sh pack                  # here: runs/gpu_carry from the CPU base models
#   bash bench/synthetic_benchmark_gpu.sh run OUT [BUDGET_S] [STEPS]   # on the device; rerun to continue
#
# ``pack`` gathers what the device needs from ``runs/benchmark_8x_ft1800`` (the converged base models: the
# ``source_longer`` / ``oracle_longer`` runs of seeds 0-2, 2 000 + 1 800 steps on the CPU, deterministic by
# seed) into ``runs/gpu_carry`` (~40 MB: the three source checkpoints, every base run's scores and metrics,
# the Zero-DCE); carry it and ``.whl`` to the device (docs/results.md has the full device command).
#
# ``run``: writes the synthetic ``small`` set (the benchmark's, seed 0) with 16 workers, then phase B:
# ulca_st_jitter_always (ulca_st's default), ulca_st_jitter and full ULCA fine-tune each seed's converged
# source for STEPS (1 800) steps, nine at a time (validation every 100 steps); phase C, in the time left:
# the other recipes. Every run is fp32 (``train.precision=32-true``; cuDNN's TF32 convolutions are PyTorch's default), so the numbers compare
# with the CPU runs', but CUDA kernels are not bit-deterministic: a GPU run differs from the same seed on
# the CPU. The script stops starting work after BUDGET_S (default 530) seconds, the engine saves each
# run's state when `timeout` stops it, and the same command continues where it stopped (back to back:
# the device keeps /tmp only while warm). Each phase ends by packing every run's scores.json,
# metrics.json and config.yaml, results.json and the logs into OUT/results.tgz (one file: the device
# returns only a few).
set -uo pipefail
MODE=${1:?usage: synthetic_benchmark_gpu.sh pack | run OUT [BUDGET_S] [STEPS]}
SOURCE=${SOURCE:-runs/benchmark_8x_ft1800}
CARRY=${CARRY:-runs/gpu_carry}
if [ "$MODE" = pack ]; then
  rm -rf "$CARRY" && mkdir -p "$CARRY"
  cp -r "$SOURCE/relight" "$CARRY/relight"
  for s in 0 1 2; do
    for pair in source_longer:source_only oracle_longer:oracle; do
      from="$SOURCE/${pair%%:*}_seed$s" to="$CARRY/${pair##*:}_seed$s"
      [ -f "$from/scores.json" ] || { echo "error: $from/scores.json missing: train the base models first" \
        "(docs/results.md, '1 800 steps')" >&2; exit 2; }
      mkdir -p "$to/checkpoints" && cp "$from"/{scores.json,metrics.json,config.yaml} "$to/"
      [ "${pair##*:}" = source_only ] && cp "$from"/checkpoints/last.{safetensors,json} "$to/checkpoints/"
    done
  done
  du -sh "$CARRY"
  exit 0
fi
[ "$MODE" = run ] || { echo "error: unknown mode '$MODE' (pack or run)" >&2; exit 2; }
OUT=${2:?usage: synthetic_benchmark_gpu.sh run OUT [BUDGET_S] [STEPS]}
BUDGET=${3:-530}
STEPS=${4:-1800}
WORK=${WORK:-/tmp/nightseg_gpu_benchmark}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
mkdir -p "$OUT" "$WORK"
[ -d "$CARRY/relight" ] || { echo "error: $CARRY missing: run 'bash $0 pack' here and carry $CARRY" >&2; exit 2; }
cp -rn "$CARRY"/. "$WORK"/
python -c "
from nightseg.pipelines.demo import PLANS
from nightseg.synthetic import generator
p = PLANS['full']
generator.generate('$WORK/data', preset='small', size=p.size, seed=0, counts=p.counts, workers=16, progress=False)
" || exit 1
echo "data ready after $(( $(date +%s) - START )) s"
pack() {
  (cd "$WORK" && find . -path ./data -prune -o \( -name scores.json -o -name metrics.json -o -name config.yaml \
     -o -name results.json -o -name 'phase_*.log' \) -print | tar czf "$OUT/results.tgz.part" -T -) \
    && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
}
run_phase() {  # name, jobs, rows...
  local name=$1 jobs=$2; shift 2
  local t; t=$(left)
  if [ "$t" -lt 30 ]; then echo "phase $name skipped: ${t} s left"; return; fi
  echo "phase $name: $* (${t} s left)"
  # its own process group, so that at the budget every training (the pool's workers too, not only the
  # parent) gets SIGTERM and saves its state; a worker left running would race the next phase's
  setsid python bench/synthetic_benchmark.py --out "$WORK" --data "$WORK/data" --seeds 0 1 2 \
    --steps "$STEPS" --ulca-steps "$STEPS" --jobs "$jobs" --rows source_only oracle "$@" \
    --override data.batch_size=4 train.val_every=100 train.precision=32-true train.progress=false \
    >> "$WORK/phase_$name.log" 2>&1 &
  local pid=$!
  (sleep "$t"; kill -TERM -- "-$pid" 2>/dev/null) & local timer=$!
  wait "$pid"; local rc=$?
  kill "$timer" 2>/dev/null
  for _ in $(seq 60); do pgrep -g "$pid" > /dev/null || break; sleep 1; done  # the workers saving state
  pkill -KILL -g "$pid" 2>/dev/null
  echo "phase $name: exit $rc after $(( $(date +%s) - START )) s"
  grep -E "^(done|\||issue|ulca|full|dacs|daformer|mic|hrda)" "$WORK/phase_$name.log" | tail -45
  pack
}
run_phase B 9 ulca_st_jitter_always ulca_st_jitter full
run_phase C 12 ulca_st_jitter_always ulca_st_jitter full ulca_st dacs daformer mic hrda
echo "total $(( $(date +%s) - START )) s"
