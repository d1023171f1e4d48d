"""Test setup: corpus preparers in ``local/`` are scripts, importable once that folder is on the path."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "local"))


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share a 2-core machine: keep torch from oversubscribing it."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A tiny demo corpus (2 sessions x 2 dialogs x 4 turns, ~1.5 min of ASR speech), made once."""
    from make_demo_corpus import DemoConfig, make_demo_corpus

    cfg = DemoConfig(seed=3, sessions=2, dialogs_per_session=2, turns_per_dialog=4, asr_train_minutes=0.25,
                     asr_eval_minutes=0.1)
    info = make_demo_corpus(str(tmp_path_factory.mktemp("tiny_demo") / "corpus"), cfg, nj=2)
    info["cfg"] = cfg
    return info


UPSTREAM_TINY = [
    "dump.dtype=float32",
    "ser.variants=[{name: weighted-MP, type: weighted, head: mp, asr: upstreams, max_epochs: 3},"
    " {name: MP, type: mp, asr: upstreams, layer: all, max_epochs: 2},"
    " {name: RNN, type: rnn, asr: upstreams, layer: last, hidden: 8, max_epochs: 2},"
    " {name: IAAN, type: iaan, asr: upstreams, layer: layer1, hidden: 8, max_epochs: 2},"
    " {name: eGeMAPS-SVM, type: reference, C: [0.1]}]",
    "score.chance_runs=2",
]


@pytest.fixture(scope="session")
def upstream_exp(tiny_demo, tmp_path_factory):
    """recipes/upstream_probe end to end on the tiny demo corpus with a tiny random WavLM (2 layers of 32)."""
    sys.path.insert(0, os.path.join(REPO, "utils"))
    from make_tiny_upstream import make_tiny_upstream
    from test_pipeline import run_recipe

    root = tmp_path_factory.mktemp("upstream")
    folder = make_tiny_upstream("wavlm", str(root / "wavlm-tiny"))
    exp = root / "exp"
    proc = run_recipe("upstream_probe", exp, tiny_demo, ["--upstream", folder, *UPSTREAM_TINY])
    return exp, proc


@pytest.fixture(scope="session")
def ctc_exp(tiny_demo, tmp_path_factory):
    """recipes/ctc_transfer end to end on the tiny demo corpus with tiny models (test_pipeline.CTC_TINY),
    scored on a RAVDESS-layout and a CSV evaluation corpus too (test_cross_corpus.CTC_EVAL: the CSV map
    leaves training class ang without data); shared by the pipeline, cross-corpus and inference tests,
    which copy it before changing anything."""
    from corpus_fixtures import write_csv_corpus, write_ravdess
    from test_pipeline import CTC_TINY, run_recipe

    root = tmp_path_factory.mktemp("ctc")
    evaluation = ["--eval-corpus", "ravdess", "--eval-root", write_ravdess(str(root / "ravdess")),
                  "--eval-corpus", "csv", "--eval-root", write_csv_corpus(str(root / "csvcorpus")),
                  "--eval-label-map", "happy:hap,sad:sad"]
    exp = root / "exp"
    return exp, run_recipe("ctc_transfer", exp, tiny_demo, CTC_TINY + evaluation)


@pytest.fixture(scope="session")
def las_exp(tiny_demo, tmp_path_factory):
    """recipes/las_adapt end to end on the tiny demo corpus (per-fold adapted LAS, IAAN; test_pipeline.LAS_TINY)."""
    from test_pipeline import LAS_TINY, run_recipe

    exp = tmp_path_factory.mktemp("las") / "exp"
    return exp, run_recipe("las_adapt", exp, tiny_demo, LAS_TINY)
