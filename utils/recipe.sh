# Shared frame of every recipe's run.sh: options, logging, stage guards, launching Python stages.
# A recipe sets its defaults (recipe_name, protocol, fold_scheme, ...) and then sources this file.
# shellcheck shell=bash

toolkit_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}

# Defaults common to all recipes (a recipe may set any of them before sourcing).
stage=${stage:-1}
stop_stage=${stop_stage:-6}
emotion_corpus=${emotion_corpus:-demo}
emotion_root=${emotion_root:-}
asr_corpora=()
asr_roots=()
exp_dir=${exp_dir:-}
device=${device:-auto}
ngpu=${ngpu:-0}
nj=${nj:-0}
seed=${seed:-1}
size=${size:-}
precision=${precision:-fp32}
label_map=${label_map:-}
k_speakers=${k_speakers:-}
emobox_dir=${emobox_dir:-}
librispeech_subsets=${librispeech_subsets:-}
demo_dir=${demo_dir:-${SER_DEMO_DIR:-$toolkit_root/corpora/demo}}
launcher=${launcher:-pool}
slurm_partition=${slurm_partition:-}
slurm_time=${slurm_time:-240}
slurm_gres=${slurm_gres:-}
overrides=()
upstreams=()  # --upstream PATH [--upstream-arch A] (repeatable) as stage 2 takes them, for recipe_takes_upstreams=1
eval_corpora=()  # --eval-corpus K [--eval-root DIR] [--eval-label-map M] (repeatable) as stage 1 takes them

recipe_usage() {
  cat <<EOF
Usage: $0 [options] [key=value ...]

${recipe_description:-}

Stages (the same numbers in every recipe):
  1  data preparation      emotion corpus protocols + folds, ASR corpus manifests
  2  ${stage2_title:-ASR pretraining}       ${stage2_what:-}
  3  adaptation            ${stage3_what:-}
  4  representation dump   ASR layers and handcrafted features of every emotion utterance
  5  SER training          ${stage5_what:-}
  6  scoring               RESULTS.md, results.csv, significance, confusion matrices, plots

Options:
  --stage N                first stage to run (default 1)
  --stop-stage M           last stage to run (default 6)
  --emotion-corpus C       demo | iemocap | ravdess | crema-d | emodb | msp-podcast | csv (default demo)
  --emotion-root DIR       the emotion corpus as distributed (a CSV file for csv)
  --asr-corpus C           demo | librispeech | tedlium | voxforge; repeat or comma-separate for
                           several (default demo)
  --asr-root DIR           one per non-demo --asr-corpus, same order (repeat or comma-separate)
  --librispeech-subsets S  LibriSpeech subsets, e.g. 'train=train-clean-100;dev=dev-clean;test=test-clean'
                           (default: the papers' train-clean-100,train-clean-360,train-other-500 with
                           --size paper, train-clean-100 with --size demo; dev-clean; test-clean)
  --exp-dir DIR            experiment folder (default: exp/demo, or exp/<emotion corpus>_<size>,
                           inside the recipe)
  --size demo|paper        hparams size: conf/*.yaml are the paper's, conf/demo/*.yaml shrink
                           sizes and epochs (default: demo when both corpora are demo, else paper)
  --protocol P             label protocol (default ${protocol}; other corpora: default (--label-map or every label),
                           full (every label), iemocap4 (the four IEMOCAP classes); msp-podcast: full (its
                           8 challenge classes), iemocap4, attributes (every turn); --folds emobox: EmoBox's)
  --folds S                fold scheme: loso | lospk (IEMOCAP), lkso (others), official (msp-podcast), emobox (EmoBox's published
                           folds and classes, with --emobox-dir) (default ${paper_fold_scheme}${demo_fold_scheme:+; demo size: $demo_fold_scheme})
  --emobox-dir DIR         a checkout of github.com/emo-box/EmoBox (or its data/ folder), for --folds emobox
  --label-map M            map corpus labels to classes: iemocap4, 'a:b,c:d' or a JSON file
  --k N                    speakers per test group for leave-k-speakers-out corpora
  --device D               auto | cpu | cuda | cuda:N (default auto)
  --ngpu N                 GPUs: stage 2 trains data-parallel on N GPUs (torchrun, rank k on
                           cuda:k); stages 3-5 share their jobs over them, one worker process per
                           GPU, and only the main process writes shared outputs (on a CPU: at
                           least N jobs) (default 0: every visible GPU, see CUDA_VISIBLE_DEVICES)
  --nj N                   parallel jobs in stages 3-5 (adaptations, dumps, SER trainings) and, on
                           a CPU, data-parallel processes of stage 2; each CPU job gets one thread
                           (default 0: one per CPU core on CPU, one per GPU on GPU)
  --precision P            fp32 | bf16 | fp16 mixed precision on GPU (default fp32)
  --launcher L             pool | slurm | submitit-local: how stage 5 runs its trainings: --nj
                           processes here, one Slurm job each (submitit), or the same jobs as local
                           processes (default pool)
  --slurm-partition P      Slurm partition of stage 5's jobs (default: the cluster's)
  --slurm-time MIN         time limit of each stage-5 Slurm job in minutes (default 240)
  --slurm-gres G           generic resources of each stage-5 Slurm job, e.g. gpu:1
  --eval-corpus C          an evaluation corpus the trained models are scored on, training nothing (cross-
                           corpus): demo-other | iemocap | ravdess | crema-d | emodb | csv; repeatable
  --eval-root DIR          the --eval-corpus before it as distributed (a CSV file for csv; demo-other:
                           where the second demo corpus is made, default <demo-dir>-other)
  --eval-label-map M       the labels of the --eval-corpus before it onto the training classes: iemocap4,
                           'a:b,c:d' or a JSON file (default: labels equal to a training class, and for
                           ravdess, crema-d and emodb the iemocap4 names); other labels are dropped
  --seed N                 random seed (default 1)
  --demo-dir DIR           where the demo corpus is synthesised/reused (default corpora/demo)
$(if [ "${recipe_takes_upstreams:-0}" = 1 ]; then
  echo "  --upstream PATH          a pretrained upstream folder: transformers (config.json + weights: wav2vec 2.0,"
  echo "                           HuBERT, WavLM, data2vec-audio, Whisper) or SpeechBrain (hyperparams.yaml +"
  echo "                           checkpoints), or a checkpoint file: openai-whisper (base.pt) or torchaudio"
  echo "                           pipeline (wavlm_base_plus.pth); repeatable; local files only (needed by stage 2)"
  echo "  --upstream-arch A        the architecture of the torchaudio checkpoint of the --upstream before it when"
  echo "                           its file name is not a bundle's: a bundle name (WAVLM_BASE_PLUS) or PARAMS.json"
fi)
  key=value                override an hparam of every stage that has it; prefix asr., adapt.,
                           dump. or ser. to target one stage (e.g. ser.n_runs=3)
  -h, --help               this help
EOF
}

_split_commas() { local IFS=','; read -r -a _parts <<< "$1"; }

parse_recipe_options() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) recipe_usage; exit 0 ;;
      --stage) stage=$2; shift 2 ;;
      --stop-stage|--stop_stage) stop_stage=$2; shift 2 ;;
      --emotion-corpus) emotion_corpus=$2; shift 2 ;;
      --emotion-root) emotion_root=$2; shift 2 ;;
      --asr-corpus) _split_commas "$2"; asr_corpora+=("${_parts[@]}"); shift 2 ;;
      --asr-root) _split_commas "$2"; asr_roots+=("${_parts[@]}"); shift 2 ;;
      --librispeech-subsets) librispeech_subsets=$2; shift 2 ;;
      --exp-dir) exp_dir=$2; shift 2 ;;
      --size) size=$2; shift 2 ;;
      --protocol) protocol=$2; shift 2 ;;
      --folds) fold_scheme=$2; shift 2 ;;
      --emobox-dir) emobox_dir=$2; shift 2 ;;
      --label-map) label_map=$2; shift 2 ;;
      --k) k_speakers=$2; shift 2 ;;
      --device) device=$2; shift 2 ;;
      --ngpu) ngpu=$2; shift 2 ;;
      --nj) nj=$2; shift 2 ;;
      --precision) precision=$2; shift 2 ;;
      --seed) seed=$2; shift 2 ;;
      --launcher) launcher=$2; shift 2 ;;
      --slurm-partition) slurm_partition=$2; shift 2 ;;
      --slurm-time) slurm_time=$2; shift 2 ;;
      --slurm-gres) slurm_gres=$2; shift 2 ;;
      --demo-dir) demo_dir=$2; shift 2 ;;
      --upstream)
        if [ "${recipe_takes_upstreams:-0}" != 1 ]; then echo "$0: unknown option '$1' (see --help)" >&2; exit 2; fi
        upstreams+=(--upstream "$2"); shift 2 ;;
      --upstream-arch)
        if [ "${recipe_takes_upstreams:-0}" != 1 ]; then echo "$0: unknown option '$1' (see --help)" >&2; exit 2; fi
        upstreams+=(--upstream-arch "$2"); shift 2 ;;
      --eval-corpus)
        case "$2" in demo-other|iemocap|ravdess|crema-d|emodb|csv) ;;
          *) echo "$0: unknown --eval-corpus '$2' (demo-other, iemocap, ravdess, crema-d, emodb or csv)" >&2; exit 2 ;; esac
        eval_corpora+=(--eval-corpus "$2"); shift 2 ;;
      --eval-root|--eval-label-map)
        if [ ${#eval_corpora[@]} -eq 0 ]; then echo "$0: $1 belongs to an --eval-corpus given before it" >&2; exit 2; fi
        eval_corpora+=("$1" "$2"); shift 2 ;;
      *=*) overrides+=("$1"); shift ;;
      *) echo "$0: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
  done
  [ ${#asr_corpora[@]} -gt 0 ] || asr_corpora=(demo)
  case "$emotion_corpus" in demo|iemocap|ravdess|crema-d|emodb|msp-podcast|csv) ;;
    *) echo "$0: unknown --emotion-corpus '$emotion_corpus'" >&2; exit 2 ;; esac
  if [ "$emotion_corpus" != demo ] && [ -z "$emotion_root" ]; then
    echo "$0: --emotion-root is required for --emotion-corpus $emotion_corpus" >&2; exit 2
  fi
  local n_real=0 c
  for c in "${asr_corpora[@]}"; do
    case "$c" in demo) ;; librispeech|tedlium|voxforge) n_real=$((n_real + 1)) ;;
      *) echo "$0: unknown --asr-corpus '$c'" >&2; exit 2 ;; esac
  done
  if [ "$n_real" -ne "${#asr_roots[@]}" ]; then
    echo "$0: give one --asr-root per non-demo --asr-corpus (${n_real} corpora, ${#asr_roots[@]} roots)" >&2; exit 2
  fi
  if [ -z "$size" ]; then
    if [ "$emotion_corpus" = demo ] && [ "${asr_corpora[*]}" = demo ]; then size=demo; else size=paper; fi
  fi
  case "$size" in demo|paper) ;; *) echo "$0: --size must be demo or paper" >&2; exit 2 ;; esac
  case "$ngpu" in ''|*[!0-9]*) echo "$0: --ngpu must be a number of GPUs (0: every visible one), got '$ngpu'" >&2; exit 2 ;; esac
  case "$launcher" in pool|slurm|submitit-local) ;;
    *) echo "$0: --launcher must be pool, slurm or submitit-local" >&2; exit 2 ;; esac
  if [ -z "$fold_scheme" ]; then  # a recipe may use a cheaper fold scheme for the demo size
    if [ "$size" = demo ] && [ -n "${demo_fold_scheme:-}" ]; then fold_scheme=$demo_fold_scheme
    else fold_scheme=$paper_fold_scheme; fi
  fi
  if [ "$fold_scheme" = emobox ]; then
    if [ -z "$emobox_dir" ]; then echo "$0: --folds emobox needs --emobox-dir (a checkout of emo-box/EmoBox)" >&2; exit 2; fi
    if [ ! -d "$emobox_dir" ]; then echo "$0: --emobox-dir $emobox_dir: no such folder" >&2; exit 2; fi
    emobox_dir=$(cd "$emobox_dir" && pwd)
    # EmoBox's classes: IEMOCAP's four (excited into happy) = our standard protocol; the acted corpora's every label
    case "$protocol" in standard|lakomkin2018|lakomkin2018_strict|default)
      if [ "$emotion_corpus" = demo ] || [ "$emotion_corpus" = iemocap ]; then protocol=standard; else protocol=full; fi ;;
    esac
  elif [ "$emotion_corpus" != demo ] && [ "$emotion_corpus" != iemocap ]; then
    # Corpora without sessions: protocols default (--label-map), full and iemocap4; speaker-group folds.
    case "$protocol" in standard|lakomkin2018|lakomkin2018_strict) protocol=default ;; esac
    [ "$fold_scheme" = loso ] || [ "$fold_scheme" = lospk ] && fold_scheme=lkso
  fi
  if [ -z "$exp_dir" ]; then
    if [ "$size" = demo ] && [ "$emotion_corpus" = demo ]; then exp_dir=$recipe_dir/exp/demo
    else exp_dir=$recipe_dir/exp/${emotion_corpus}_${size}; fi
  fi
  mkdir -p "$exp_dir/logs"
  exp_dir=$(cd "$exp_dir" && pwd)
  data_dir=$exp_dir/data
  conf_dir=$recipe_dir/conf
  log_file=$exp_dir/run.log
  export PYTHONPATH="$toolkit_root${PYTHONPATH:+:$PYTHONPATH}"
  $python -m ser_modules.utils.hparams check --conf-dir "$conf_dir" -- "${overrides[@]}"
  local n
  for n in "$stage" "$stop_stage"; do
    case "$n" in [1-6]) ;; *) echo "$0: --stage and --stop-stage must be stage numbers 1-6, got '$n'" >&2; exit 2 ;; esac
  done
  if [ ${#eval_corpora[@]} -gt 0 ] && [ "$stage" -gt 1 ]; then
    echo "$0: --eval-corpus is prepared by stage 1: start at --stage 1 (finished stages are reused, nothing is retrained)" >&2
    exit 2
  fi
  if [ "$stage" -gt "$stop_stage" ]; then
    echo "$0: --stage $stage is after --stop-stage $stop_stage: no stage to run" >&2; exit 2
  fi
  if [ "${recipe_takes_upstreams:-0}" = 1 ] && [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
    if [ ${#upstreams[@]} -eq 0 ]; then
      echo "$0: stage 2 needs --upstream PATH (a model folder or checkpoint; utils/make_tiny_upstream.py writes a tiny one)" >&2; exit 2
    fi
    $python -m ser_modules.upstreams check "${upstreams[@]}" || exit 2  # a bad upstream stops before stage 1
  fi
}

log() {
  local line
  line="$(date '+%Y-%m-%d %H:%M:%S') ($recipe_name) $*"
  echo "$line" >&2
  [ -n "${log_file:-}" ] && echo "$line" >> "$log_file"
  return 0
}

# run_stage N "description": true when N is inside [--stage, --stop-stage]; logs the stage start.
run_stage() {
  if [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; then
    log "stage $1: $2"
    return 0
  fi
  return 1
}

# Every stage runs as a child the runner waits for, so that SIGTERM (a scheduler's pre-emption) or
# SIGINT (Ctrl-C) to the runner reaches the stage: it stops its workers, keeps finished work, and the
# same command resumes. (A background child ignores SIGINT, so both are passed on as SIGTERM.)
_child=
_on_signal() {
  log "stopped by SIG$1: finished work is kept; rerun the same command to resume"
  if [ -n "$_child" ]; then  # a stopped (Ctrl-Z) stage is continued to see the signal
    kill -TERM "$_child" 2>/dev/null || true; kill -CONT "$_child" 2>/dev/null || true; wait "$_child" || true
  fi
  exit $((128 + $2))
}
trap '_on_signal TERM 15' TERM
trap '_on_signal INT 2' INT

run_child() {
  "$@" &
  _child=$!
  local rc=0
  wait "$_child" || rc=$?
  _child=
  return "$rc"
}

# Arguments every Python stage takes.
common_stage_args() {
  echo --exp-dir "$exp_dir" --data-dir "$data_dir" --conf-dir "$conf_dir" --size "$size" \
    --protocol "$protocol" --folds "$fold_scheme" --device "$device" --precision "$precision" \
    --seed "$seed" --nj "$nj" --ngpu "$ngpu"
}

# Stage 5's launcher options.
launcher_args() {
  echo --launcher "$launcher" --slurm-time "$slurm_time"
  [ -n "$slurm_partition" ] && echo --slurm-partition "$slurm_partition"
  [ -n "$slurm_gres" ] && echo --slurm-gres "$slurm_gres"
  return 0
}

# run_python MODULE ARGS...: run a Python stage module (stages 3-6 parallelise their jobs themselves).
run_python() {
  local module=$1; shift
  run_child $python -m "$module" "$@" -- "${overrides[@]}"
}

# gpu_count: GPUs this run may use (0 with --device cpu); asked once.
gpu_count() {
  if [ -z "${_gpus:-}" ]; then
    if [ "$device" = cpu ]; then _gpus=0
    elif ! compgen -G '/dev/nvidia[0-9]*' > /dev/null && [ ! -e /dev/kfd ] && [ ! -e /dev/dxg ]; then
      _gpus=0  # no NVIDIA, ROCm or WSL GPU device: torch sees none (asking it costs a 1.5 s import)
    else
      _gpus=$($python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' \
        2>/dev/null || echo 0)
    fi
  fi
  echo "$_gpus"
}

# run_training MODULE ARGS...: stage 2 data-parallel: over --ngpu GPUs (default: every visible one;
# rank k on cuda:k), or on a CPU over --nj single-thread processes (small recurrent models are
# latency-bound: two one-thread processes train about 1.5x faster than one two-thread process). The
# configured batch size is the global one (or batch_seconds the audio of each process's batch).
run_training() {
  local module=$1; shift
  local procs gpus
  gpus=$(gpu_count)
  if [[ "$device" == cuda:* ]]; then  # one named GPU: a single process on it
    run_child $python -m "$module" "$@" -- "${overrides[@]}"
    return
  fi
  if [ "$gpus" -gt 0 ]; then
    procs=$ngpu; [ "$procs" -gt 0 ] || procs=$gpus
    if [ "$procs" -gt "$gpus" ]; then log "--ngpu $procs: only $gpus GPU(s) visible"; return 2; fi
    log "stage 2 trains on $procs GPU(s) (cuda:0-$((procs - 1)); --ngpu or CUDA_VISIBLE_DEVICES for fewer)"
  else
    procs=$nj; [ "$procs" -gt 0 ] || procs=$(nproc 2>/dev/null || echo 1)
    [ "$procs" -ge "$ngpu" ] || procs=$ngpu
  fi
  local launch=($python -m torch.distributed.run --standalone --nproc_per_node="$procs" -m "$module")
  if [ "$procs" -gt 1 ] && [ "$gpus" -gt 0 ]; then
    run_child "${launch[@]}" "$@" -- "${overrides[@]}"
  elif [ "$procs" -gt 1 ]; then
    run_child env OMP_NUM_THREADS=1 "${launch[@]}" "$@" -- "${overrides[@]}"
  else
    run_child $python -m "$module" "$@" -- "${overrides[@]}"
  fi
}

# Stage 1 is the same in every recipe.
stage_data_preparation() {
  local args=(--emotion-corpus "$emotion_corpus" --out "$data_dir" --demo-dir "$demo_dir" --seed "$seed"
              --size "$size" --nj "$nj" --log "$exp_dir/logs/stage1_data.log")
  [ -n "$librispeech_subsets" ] && args+=(--librispeech-subsets "$librispeech_subsets")
  [ -n "$emotion_root" ] && args+=(--emotion-root "$emotion_root")
  [ -n "$label_map" ] && args+=(--label-map "$label_map")
  [ -n "$k_speakers" ] && args+=(--k "$k_speakers")
  [ -n "$emobox_dir" ] && args+=(--emobox-dir "$emobox_dir" --emobox-protocol "$protocol")
  local c i=0
  for c in "${asr_corpora[@]}"; do
    args+=(--asr-corpus "$c")
    if [ "$c" != demo ]; then args+=(--asr-root "${asr_roots[$i]}"); i=$((i + 1)); fi
  done
  # What identifies the prepared data: the corpora, the options and the preparers' code (a new
  # demo generator remakes the demo corpus), not --nj or the log file.
  # (The evaluation corpora have their own stamps: adding one prepares only it.)
  local stamp f
  stamp=$( (printf '%s\n' "$emotion_corpus" "$emotion_root" "$label_map" "$k_speakers" "$seed" "$demo_dir" "$emobox_dir" \
    "$size" "$librispeech_subsets" "${asr_corpora[@]}" "${asr_roots[@]}"
    for f in "$toolkit_root"/local/*.py; do [ "${f##*/}" = prepare_eval.py ] || cat "$f"; done
    cat "$toolkit_root"/ser_modules/data/{corpus,audio_screen,emobox,folds}.py "$toolkit_root"/ser_modules/utils/audio_file.py) | sha1sum | cut -c1-16)
  if [ -f "$data_dir/prepare_summary.json" ] && [ "$(cat "$data_dir/.stage1_stamp" 2>/dev/null)" = "$stamp" ]; then
    log "stage 1: data already prepared in $data_dir (same corpora), skipped"
  else
    run_child $python "$toolkit_root/local/prepare_data.py" "${args[@]}"
    echo "$stamp" > "$data_dir/.stage1_stamp"
  fi
  # The evaluation corpora of this run: stages 4-6 read their list (data/eval/corpora.json) until stage 1
  # runs again; stage 1 without --eval-corpus empties it (what was prepared and scored stays cached).
  if [ ${#eval_corpora[@]} -gt 0 ] || [ -d "$data_dir/eval" ]; then
    run_child $python "$toolkit_root/local/prepare_eval.py" --data-dir "$data_dir" --protocol "$protocol" \
      --demo-dir "$demo_dir" --nj "$nj" --log "$exp_dir/logs/stage1_data.log" ${eval_corpora[@]+"${eval_corpora[@]}"}
  fi
}

# watch_curves STAGE: at the start of a training stage, the line that shows its curves live (utils/curves.py).
watch_curves() {
  if $python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorboard') is None)" 2>/dev/null; then
    log "watch the training curves: tensorboard --logdir $exp_dir/tensorboard/$1"
  else
    log "training curves off: pip install tensorboard (or pip install -e '.[tensorboard]'), then tensorboard --logdir $exp_dir/tensorboard"
  fi
}

# The stages of every recipe; what each stage does comes from the recipe's conf/*.yaml.
run_recipe() {
  parse_recipe_options "$@"
  log "experiment $exp_dir (size $size, emotion corpus $emotion_corpus, ASR corpora ${asr_corpora[*]})"
  if run_stage 1 "data preparation"; then
    stage_data_preparation
  fi
  if run_stage 2 "${stage2_title:-ASR pretraining}: $stage2_what"; then
    if [ -n "${stage2_module:-}" ]; then  # a recipe's own stage 2 (upstream_probe: describe, no training)
      run_python "$stage2_module" $(common_stage_args) ${upstreams[@]+"${upstreams[@]}"}  # quoted: paths may hold spaces
    else
      watch_curves stage2
      run_training ser_modules.stages.asr_pretrain $(common_stage_args)
    fi
  fi
  if run_stage 3 "adaptation: $stage3_what"; then
    watch_curves stage3
    run_python "${stage3_module:-ser_modules.stages.adapt}" $(common_stage_args)
  fi
  if run_stage 4 "representation dump"; then
    run_python ser_modules.stages.dump $(common_stage_args)
  fi
  if run_stage 5 "SER training: $stage5_what"; then
    watch_curves stage5
    run_python ser_modules.stages.ser_train $(common_stage_args) $(launcher_args)
  fi
  if run_stage 6 "scoring"; then
    run_python ser_modules.stages.score $(common_stage_args)
  fi
  log "done: stages $stage-$stop_stage of $exp_dir"
}
