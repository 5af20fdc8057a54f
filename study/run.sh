#!/usr/bin/env bash
# The study: baseline WAM vs AGRA vs the two controls, paired seeds, then the ablations.
#   bash study/run.sh cpu     # seeds 0-2, one-knob ablations, seeds 3-4, frozen backbone
#                             # (configs/cpu.yaml; results/cpu/)
#   SEEDS="0 1 2" bash study/run.sh cpu headline     # fewer seeds, headline only
#   bash study/run.sh metaworld headline   # Meta-World: baseline, agra and the two controls
#   bash study/run.sh regime  # the paper's regime (configs/regime.yaml; results/regime/): its 2x2
#                             # and the controls (seeds 0-2), the demo-count sweep and the
#                             # ablations (seed 0), then seeds 3-4
#   JOBS=2 bash study/run.sh cpu     # runs at once, each on nproc / JOBS threads (default 2 on 2
#                                    # cores: one thread each is faster in sum than two for one run)
#   PYTHON=/path/to/python bash study/run.sh cpu     # the interpreter (default: python)
# Resumable: run it again and it skips finished runs and evaluations and resumes a partial run
# from its checkpoint. Each run, once evaluated, is recorded in results/<preset>/runs/<name>/: its
# folder without the checkpoints (config, training curve, everything eval.py wrote to eval/:
# metrics, examples, pictures), so a finished run needs nothing in runs/ again. The report is built
# at the end from those records; the same report while the study still runs:
#   python study/report.py results/cpu/runs/* --out results/cpu
# and the training curves of the runs still going: python study/report.py --curves t.png runs/cpu-*
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: train.py, eval.py, configs/, runs/, results/
preset=${1:-cpu}
part=${2:-all}                  # headline | sweep (regime) | ablations | all
case $part in headline | sweep | ablations | all) ;;
  *) echo "study/run.sh: part '$part'; expected headline, sweep, ablations or all" >&2; exit 2 ;;
esac
seeds=${SEEDS:-"0 1 2 3 4"}     # 5: with 3 the arms' intervals overlapped
jobs=${JOBS:-2}
case $jobs in '' | *[!0-9]* | 0)
  echo "study/run.sh: JOBS='$jobs'; expected a whole number >= 1" >&2; exit 2 ;; esac
cores=$(getconf _NPROCESSORS_ONLN)  # not nproc: nproc obeys OMP_NUM_THREADS
export OMP_NUM_THREADS=$(( cores / jobs > 0 ? cores / jobs : 1 ))
py=${PYTHON:-python}
out=results/$preset
mkdir -p "$out/runs"
log="$out/study.log"

# arm name -> the only overrides that differ from the preset (nothing else changes between arms)
declare -A ARMS PRE  # PRE: an arm's video-only pretrain, trained first (the frozen backbone)
if [ "$preset" = regime ]; then
  # the paper's regime (configs/regime.yaml: 500 lab demos, 4,000 hand clips): its 2x2 of WAM and
  # AGRA with and without the action-free clips, and both controls with the clips
  ARMS=(
    [wam-clips]="align.weight=0.0"
    [agra-clips]="align.teacher=oracle"
    [wam]="align.weight=0.0 video.n_clips=0"
    [agra]="align.teacher=oracle video.n_clips=0"
    [agra-random-clips]="align.teacher=random"
    [agra-shuffled-clips]="align.teacher=shuffled"
  )
  headline=(wam-clips agra-clips wam agra agra-random-clips agra-shuffled-clips)
  sweep=()  # seed 0: success against the demonstration count (500 is the headline's)
  for n in 125 250 1000; do
    ARMS[wam-clips-d$n]="align.weight=0.0 data.n_episodes=$n"
    ARMS[agra-clips-d$n]="align.teacher=oracle data.n_episodes=$n"
    sweep+=("wam-clips-d$n" "agra-clips-d$n")
  done
  # ablations (seed 0), one knob from agra-clips: the aligned layer at 1/4 and 3/4 depth (2/4 is
  # the preset's), every action block reading the aligned layer, and which windows are aligned
  ARMS+=(
    [abl-layer1]="align.layer=1"
    [abl-layer3]="align.layer=3"
    [abl-bridge_single]="model.bridge=single"
    [abl-align_clips]="align.windows=clips"
    [abl-align_demos]="align.windows=demos"
  )
  ablations=(abl-layer1 abl-layer3 abl-bridge_single abl-align_clips abl-align_demos)
  late=()
  compare=(--baseline wam-clips --reference agra-clips --pair agra:wam)  # the report's pairs
elif [ "$preset" = metaworld ]; then
  # Meta-World (configs/metaworld.yaml): the headline's four arms; no ablations yet
  ARMS=(
    [baseline]="align.weight=0.0"
    [agra]="align.teacher=oracle"
    [agra-random]="align.teacher=random"
    [agra-shuffled]="align.teacher=shuffled"
  )
  headline=(baseline agra agra-random agra-shuffled)
  sweep=() ablations=() late=()
  compare=(--baseline baseline --reference agra)
else
  ARMS=(
    [baseline]="align.weight=0.0"
    [agra]="align.teacher=oracle"
    [agra-random]="align.teacher=random"
    [agra-shuffled]="align.teacher=shuffled"
  )
  headline=(baseline agra agra-random agra-shuffled)
  sweep=()
  # ablations (seed 0): the paper's questions, each one knob away from `agra`
  ARMS+=(
    [abl-oracle_task]="align.teacher=oracle_task"
    [abl-layer3]="align.layer=3"
    [abl-video_pass]="align.apply_to=video"
    [abl-bridge_single]="model.bridge=single"
    [abl-norm_none]="align.normalize=none"
    [abl-weight0.1]="align.weight=0.1"
    [abl-weight2]="align.weight=2.0"
  )
  # the frozen backbone: a video-only pretrain (action loss off) of the same seed and length, then
  # the action head trained alone on its fixed EMA video model; -agra pretrains with the alignment
  PRE=(
    [abl-frozen]="align.weight=0.0 train.action_weight=0.0"
    [abl-frozen-agra]="align.teacher=oracle train.action_weight=0.0"
  )
  ARMS+=(
    [abl-frozen]="align.weight=0.0 train.freeze=video"
    [abl-frozen-agra]="align.weight=0.0 train.freeze=video"
  )
  ablations=(abl-oracle_task abl-layer3 abl-video_pass abl-bridge_single abl-norm_none
             abl-weight0.1 abl-weight2)
  late=(abl-frozen abl-frozen-agra)  # the issue's "if time allows": after every headline seed
  compare=(--baseline baseline --reference agra)
fi
if [ -n "${DINOV2_WEIGHTS:-}" ]; then  # a user's local DINOv2 state dict adds the real-teacher arm
  dino=agra-dinov2  # the regime's has the clips, like its other AGRA arms
  if [ "$preset" = regime ]; then dino=agra-dinov2-clips; fi
  ARMS[$dino]="align.teacher=dinov2 align.teacher_weights=$DINOV2_WEIGHTS align.strict_teacher=True"
  headline+=("$dino")
fi

run_one() {  # arm seed
  local arm=$1 seed=$2 name="$preset-$1-s$2"
  local t0=$SECONDS
  if [ -f "$out/runs/$name/eval/metrics.json" ]; then return; fi
  local resumed=""  # a resumed run's time counts from its checkpoint, not from step 0
  if [ -f "runs/$name/ckpt.pt" ]; then resumed=", resumed from its checkpoint"; fi
  local init=()
  if [ -n "${PRE[$arm]:-}" ]; then  # its pretrain first (kept in $out/pretrain/, never evaluated)
    local pre="$preset-$arm-pre-s$2"
    # shellcheck disable=SC2086
    $py train.py "configs/$preset.yaml" "name=$pre" "train.seed=$seed" ${PRE[$arm]} \
      >>"$log.$pre" 2>&1 || return 1
    mkdir -p "$out/pretrain/$pre"
    cp "runs/$pre/config.yaml" "runs/$pre/metrics.csv" "$out/pretrain/$pre/" || return 1
    init=("train.init_from=runs/$pre/ckpt.pt")
  fi
  # shellcheck disable=SC2086
  $py train.py "configs/$preset.yaml" "name=$name" "train.seed=$seed" ${ARMS[$arm]} "${init[@]}" \
    >>"$log.$name" 2>&1 || return 1  # (set -e does not reach inside a function run with ||)
  $py eval.py "runs/$name" >>"$log.$name" 2>&1 || return 1
  local rec="$out/runs/$name" f  # the record; eval/metrics.json last: it marks the run finished
  mkdir -p "$rec/eval"
  cp "runs/$name/config.yaml" "runs/$name/metrics.csv" "$rec/" || return 1
  for f in "runs/$name/eval/"*; do  # what eval.py wrote: examples.pt and the PNGs
    if [ "${f##*/}" != metrics.json ]; then cp -r "$f" "$rec/eval/" || return 1; fi
  done
  cp "runs/$name/eval/metrics.json" "$rec/eval/" || return 1
  echo "$(date -u +%FT%TZ) $name done in $((SECONDS - t0)) s ($OMP_NUM_THREADS threads$resumed)" \
    | tee -a "$out/timing.txt"
}

# "arm seed", in the order they should finish: seeds outer, so each seed is a pairing; with `all`
# the first three seeds, then the sweep and the one-knob ablations, then the other seeds, then
# the frozen backbone (two trainings each), so the smallest complete study (three seeds per arm
# and the one-knob ablations) is in first and the headline's five seeds before the optional ones
queue=()
read -ra seed_list <<<"$seeds"
add_headline() {  # seed ...
  for seed in "$@"; do for arm in "${headline[@]}"; do queue+=("$arm $seed"); done; done
}
if [ "$part" = headline ]; then add_headline "${seed_list[@]}"; fi
if [ "$part" = all ]; then add_headline "${seed_list[@]:0:3}"; fi
if [ "$part" = sweep ] || [ "$part" = all ]; then
  for arm in "${sweep[@]}"; do queue+=("$arm 0"); done
  if [ "$part" = sweep ] && [ "${#sweep[@]}" = 0 ]; then
    echo "study/run.sh: preset '$preset' has no sweep (the regime's)" >&2; exit 2
  fi
fi
if [ "$part" = ablations ] || [ "$part" = all ]; then
  for arm in "${ablations[@]}"; do queue+=("$arm 0"); done
fi
if [ "$part" != headline ] && [[ " $seeds " != *" 0 "* ]]; then  # read against seed 0's headline
  echo "study/run.sh: the sweep and the ablations run on seed 0; SEEDS='$seeds' lacks it, so" \
    "their tables have no headline row of their seed to compare with" >&2
fi
if [ "$part" = all ]; then add_headline "${seed_list[@]:3}"; fi
if [ "$part" = ablations ] || [ "$part" = all ]; then
  for arm in "${late[@]}"; do queue+=("$arm 0"); done
fi
claims=$(mktemp -d)  # a worker claims an item by making its folder (mkdir is atomic)
trap 'rm -rf "$claims"' EXIT
worker() {  # each worker takes the next unclaimed item, so the queue is done in its order
  for ((i = 0; i < ${#queue[@]}; i++)); do
    mkdir "$claims/$i" 2>/dev/null || continue
    # shellcheck disable=SC2086
    run_one ${queue[$i]} || echo "$(date -u +%FT%TZ) FAILED: ${queue[$i]} (see $log.*)" \
      | tee -a "$out/timing.txt"
  done
}

# the demonstrations once, before the workers start (else each of them builds the same cache)
# (and the action-free clips, where the preset has them; Meta-World's demos on its preset)
$py -c "import config, data; data.make_data(config.load_config('configs/$preset.yaml'))" \
  >>"$log" 2>&1
echo "$(date -u +%FT%TZ) start: bash study/run.sh $*  (seeds: $seeds, $jobs jobs) on $(uname -n)," \
  "$cores cores" | tee -a "$out/timing.txt"
for ((k = 0; k < jobs; k++)); do worker "$k" & done
wait
# the report reads the records of the finished runs only: a run still going in another study/run.sh,
# or one that failed, has none (or one without its eval/metrics.json, copied last)
recs=()
for r in "$out"/runs/*; do if [ -f "$r/eval/metrics.json" ]; then recs+=("$r"); fi; done
readme=()  # README.md's block for this preset, where it has one, is filled from summary.md
if grep -qsF -- "<!-- results:$out -->" README.md; then readme=(--readme README.md); fi
where="no report (no finished run)"
if [ "${#recs[@]}" -gt 0 ]; then
  $py study/report.py "${recs[@]}" --out "$out" "${readme[@]}" "${compare[@]}" >>"$log" 2>&1
  where="$out/report.md"
  if [ "${#readme[@]}" -gt 0 ]; then where="$where, README.md block filled"; fi
fi
echo "$(date -u +%FT%TZ) study finished: $where" | tee -a "$out/timing.txt"
