#!/usr/bin/env bash
# The study: baseline WAM vs AGRA vs the two controls, paired seeds, then the ablations.
#   bash study.sh cpu            # headline (3 seeds) then ablations, on configs/cpu.yaml
#   SEEDS="0 1 2 3 4" bash study.sh cpu headline
# Resumable: run it again and it skips finished runs and evaluations and resumes a partial run
# from its checkpoint. Every run's metrics.json, config and training curve are copied to
# results/<preset>/runs/, and the report is rebuilt after every evaluation, so what has finished
# is always in results/ (checkpoints stay in runs/).
set -euo pipefail
cd "$(dirname "$0")"
preset=${1:-cpu}
part=${2:-all}                  # headline | ablations | all
seeds=${SEEDS:-"0 1 2"}
py=${PYTHON:-python}
out=results/$preset
mkdir -p "$out/runs"
log="$out/study.log"

# arm name -> the only overrides that differ from the preset (nothing else changes between arms)
declare -A ARMS=(
  [baseline]="align.weight=0.0"
  [agra]="align.teacher=oracle"
  [agra-random]="align.teacher=random"
  [agra-shuffled]="align.teacher=shuffled"
)
headline=(baseline agra agra-random agra-shuffled)
if [ -n "${DINOV2_WEIGHTS:-}" ]; then  # a user's local DINOv2 state dict adds the real-teacher arm
  ARMS[agra-dinov2]="align.teacher=dinov2 align.teacher_weights=$DINOV2_WEIGHTS align.strict_teacher=True"
  headline+=(agra-dinov2)
fi
# ablations (seed 0): the paper's questions, each one knob away from `agra`
ARMS+=(
  [abl-oracle_task]="align.teacher=oracle_task"
  [abl-layer3]="align.layer=3"
  [abl-video_pass]="align.apply_to=video"
  [abl-bridge_single]="model.bridge=single"
  [abl-norm_none]="align.normalize=none"
  [abl-norm_none-baseline]="align.weight=0.0 align.normalize=none"
  [abl-weight0.1]="align.weight=0.1"
  [abl-weight2]="align.weight=2.0"
)
ablations=(abl-oracle_task abl-layer3 abl-video_pass abl-bridge_single abl-norm_none abl-weight0.1
           abl-weight2)

run_one() {  # arm seed
  local arm=$1 seed=$2 name="$preset-$1-s$2"
  local t0=$SECONDS
  # shellcheck disable=SC2086
  $py train.py "configs/$preset.yaml" "name=$name" "train.seed=$seed" ${ARMS[$arm]} >>"$log" 2>&1
  $py eval.py "runs/$name" >>"$log" 2>&1
  mkdir -p "$out/runs/$name"
  cp "runs/$name/config.yaml" "runs/$name/metrics.csv" "runs/$name/eval/metrics.json" \
     "$out/runs/$name/"
  echo "$(date -u +%FT%TZ) $name done in $((SECONDS - t0)) s" | tee -a "$out/timing.txt"
  $py eval.py runs/"$preset"-*/ --out "$out" >>"$log" 2>&1  # report of everything so far
}

echo "$(date -u +%FT%TZ) start: bash study.sh $*  (seeds: $seeds) on $(uname -n), $(nproc) cores" \
  | tee -a "$out/timing.txt"
if [ "$part" = headline ] || [ "$part" = all ]; then
  for seed in $seeds; do             # seeds outer: every finished seed is a paired comparison
    for arm in "${headline[@]}"; do run_one "$arm" "$seed"; done
  done
fi
if [ "$part" = ablations ] || [ "$part" = all ]; then
  for arm in "${ablations[@]}"; do run_one "$arm" 0; done
fi
echo "$(date -u +%FT%TZ) study finished: $out/report.md" | tee -a "$out/timing.txt"
