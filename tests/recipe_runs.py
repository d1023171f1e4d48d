"""Running a recipe as a user does (``recipes/<recipe>/run.sh``) on the tiny demo corpus, and the tiny
configurations of the shared test experiments (``conftest.py``): tiny models, a few epochs."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CTC_TINY = [
    "asr.n_epochs=1", "asr.rnn_layers=1", "asr.rnn_hidden=16", "asr.conv_channels=2", "asr.decoders=[greedy]",
    "dump.dtype=float32", "dump.augmented_copies=1",
    "ser.variants=[{name: MP-2, type: mp, asr: pretrained, layer: gru1, max_epochs: 3, asr_norm: train},"
    " {name: baseline-8, type: baseline, hidden: 8, max_epochs: 2},"
    " {name: Progressive-1, type: progressive, asr: pretrained, layer: gru1, hidden: 8, max_epochs: 2, asr_norm: train},"
    " {name: MP-2-dim, type: mp, asr: pretrained, layer: gru1, max_epochs: 3, asr_norm: train, task: multitask}]",
    "ser.n_runs=1", "score.reference=baseline-8", "score.tsne_layers=[gru1]", "score.loudness_layer=gru1", "score.chance_runs=2",
]
# Stage 3 decodes greedily: the demo's joint CTC/attention search of an untrained tiny LAS runs every
# utterance to its longest hypothesis (30 s of 38 in stage 3); joint decoding in adaptation is tested
# in test_asr_training (test_adaptation_stage_*, test_joint_decoding_*).
LAS_GREEDY_ADAPTATION = ["adapt.decoders=[greedy]", "adapt.valid_decoder=greedy"]
LAS_TINY = [
    "asr.n_epochs=1", "asr.listener_hidden=8", "asr.fc_size=16", "asr.speller_hidden=16", "asr.attention_dim=8",
    "asr.embedding_dim=8", "asr.decoders=[greedy]", "adapt.epochs_per_stage=1", "adapt.structured_rank=4",
    "adapt.score_every_stage=True", *LAS_GREEDY_ADAPTATION,
    "ser.variants=[{name: IAAN-pretrained-pblstm1, type: iaan, asr: pretrained, layer: pblstm1, hidden: 8, max_epochs: 2},"
    " {name: IAAN-structured-pblstm2, type: iaan, asr: structured, layer: pblstm2, hidden: 8, max_epochs: 2}]",
    "score.reference=IAAN-pretrained-pblstm1", "score.chance_runs=2",
]
UPSTREAM_TINY = [
    "dump.dtype=float32",
    "ser.variants=[{name: weighted-MP, type: weighted, head: mp, asr: upstreams, max_epochs: 3},"
    " {name: MP, type: mp, asr: upstreams, layer: all, max_epochs: 2},"
    " {name: RNN, type: rnn, asr: upstreams, layer: last, hidden: 8, max_epochs: 2},"
    " {name: IAAN, type: iaan, asr: upstreams, layer: layer1, hidden: 8, max_epochs: 2},"
    " {name: eGeMAPS-SVM, type: reference, C: [0.1]},"
    " {name: weighted-MP-top1, type: weighted, head: mp, asr: upstreams, finetune_blocks: 1, max_epochs: 2,"
    " warmup_steps: 2, finetune_input: waveform}]",
    "score.chance_runs=2",
]


def run_recipe(recipe: str, exp, tiny_demo: dict, extra: list[str]) -> subprocess.CompletedProcess:
    """``recipes/<recipe>/run.sh`` on the tiny demo corpus (IEMOCAP and LibriSpeech layouts), demo size,
    one job, leave-one-session-out; fails the test with the end of the output unless it succeeds."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", os.path.join(REPO, "recipes", recipe, "run.sh"), "--exp-dir", str(exp), "--size", "demo",
           "--emotion-corpus", "iemocap", "--emotion-root", tiny_demo["iemocap"], "--asr-corpus", "librispeech",
           "--asr-root", tiny_demo["librispeech"], "--nj", "1", "--folds", "loso", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
