#!/usr/bin/env bash
# Probing pretrained speech encoders ("upstreams": wav2vec 2.0, HuBERT, WavLM, data2vec-audio, the
# Whisper encoder, SpeechBrain encoders) for emotion, SUPERB style: the upstream stays frozen, every
# layer is dumped once, and SER heads (MP-x, RNN-x, IAAN, and the learned weighted sum of all layers)
# train on them, leave-one-session-out, with the same stages and tables as the other recipes.
#   recipes/upstream_probe/run.sh --upstream /models/wavlm-base-plus [--upstream /models/hubert-base-ls960]
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_name=upstream_probe
recipe_description="SUPERB-style probing of frozen pretrained upstreams: SER heads on every layer and on their learned weighted sum."
recipe_takes_upstreams=1
stage2_title="upstream description"
stage2_module=ser_modules.stages.upstream_describe
stage2_what="verify and describe each --upstream (layers, dimensions, frame rate, parameters); nothing is trained"
stage3_module=ser_modules.stages.upstream_adapt
stage3_what="none by default (frozen upstreams); adapt.ctc_head=True: CTC fine-tuning of an upstream per fold"
stage5_what="weighted layer sum (SUPERB) with MP / RNN heads, MP-x, RNN-x, IAAN on every layer, every fold"
protocol=standard
paper_fold_scheme=loso
fold_scheme=

# shellcheck source=../../utils/recipe.sh
. "$recipe_dir/../../utils/recipe.sh"
run_recipe "$@"
