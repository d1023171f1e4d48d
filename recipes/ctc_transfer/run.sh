#!/usr/bin/env bash
# Lakomkin et al. 2018, "Reusing neural speech representations for auditory emotion recognition":
# a frozen DeepSpeech2-style CTC ASR, SER heads on its layers (MP-x, RNN-x, Progressive net-x)
# against a BiGRU baseline on MFCC+pitch, leave-one-speaker-out on IEMOCAP.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_name=ctc_transfer
recipe_description="Lakomkin et al. 2018: SER heads on a frozen DeepSpeech2-style CTC ASR."
stage2_what="DeepSpeech2 (2 conv + BiGRU layers, CTC) on the ASR corpus"
stage3_what="none: the paper keeps the ASR frozen (conf/adapt.yaml can fine-tune it)"
stage5_what="baseline BiGRU, Fine-tuning MP-x / RNN-x, Progressive net-x on every fold"
protocol=lakomkin2018
paper_fold_scheme=lospk
demo_fold_scheme=loso  # 5 folds keep the demo within minutes
fold_scheme=

# shellcheck source=../../utils/recipe.sh
. "$recipe_dir/../../utils/recipe.sh"
run_recipe "$@"
