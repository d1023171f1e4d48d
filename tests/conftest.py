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
