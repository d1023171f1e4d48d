#!/usr/bin/env bash
# Yeh et al. 2020, "Speech representation learning for emotion recognition using end-to-end ASR
# with factorized adaptation": a Listen-Attend-Spell ASR pretrained on LibriSpeech, adapted to the
# emotion corpus by three-stage fine-tuning and by SVD low-rank factorisation; representations of
# its listener layers feed an interaction-aware attention network (IAAN), leave-one-session-out.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_name=las_adapt
recipe_description="Yeh et al. 2020: LAS ASR, three-stage and SVD-factorised adaptation, IAAN on its layers."
stage2_what="Listen-Attend-Spell (BLSTM + 2 pBLSTM listener, 2-layer LSTM speller)"
stage3_what="three-stage fine-tuning and SVD-factorised (structured) LAS per fold"
stage5_what="IAAN on each ASR model's listener layers, every fold"
protocol=standard
paper_fold_scheme=loso
fold_scheme=

# shellcheck source=../../utils/recipe.sh
. "$recipe_dir/../../utils/recipe.sh"
run_recipe "$@"
