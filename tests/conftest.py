"""Test setup: corpus preparers in ``local/`` are scripts, importable once that folder is on the path;
the shared tiny experiments are built once per session, in the background (``background.py``)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "local"))

from background import Background, needed_starters, starts  # noqa: E402
from recipe_runs import CTC_TINY, LAS_TINY, UPSTREAM_TINY, run_recipe  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a recipe end to end, needs an experiment a recipe run made, or "
                                       "runs other processes for seconds (-m 'not slow': the unit tests alone)")


def pytest_collection_modifyitems(config, items):
    """Tests that need a recipe run of the background (every starter but the demo corpus's) are ``slow``."""
    for item in items:
        if set(needed_starters(item)) - {"tiny_demo"}:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share a 2-core machine: keep torch from oversubscribing it."""
    import torch

    torch.set_num_threads(1)
    yield


BACKGROUNDS: list[Background] = []  # the session's (for the terminal summary)


@pytest.fixture(scope="session")
def background(request, tmp_path_factory):
    """Recipe runs in the background, started in the order the selected tests need them."""
    bg = Background(tmp_path_factory, request.session)
    BACKGROUNDS.append(bg)
    bg.prefetch(request.session.items)
    yield bg
    bg.close()


def pytest_terminal_summary(terminalreporter):
    """The background runs' wall times (since the session began), where the suite's time goes."""
    for bg in BACKGROUNDS:
        if bg.timings:
            terminalreporter.section("background recipe runs (2 at a time)")
            for line in bg.report():
                terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _prefetch(background):
    """Starts the background runs before the first test."""


def make_tiny_demo(folder) -> dict:
    from make_demo_corpus import DemoConfig, make_demo_corpus

    cfg = DemoConfig(seed=3, sessions=2, dialogs_per_session=2, turns_per_dialog=4, asr_train_minutes=0.25,
                     asr_eval_minutes=0.1)
    info = make_demo_corpus(str(folder / "corpus"), cfg, nj=2)
    info["cfg"] = cfg
    return info


@starts("tiny_demo")
def _start_tiny_demo(bg, session):
    return bg.run(make_tiny_demo, bg.tmp.mktemp("tiny_demo"))


@pytest.fixture(scope="session")
def tiny_demo(background):
    """A tiny demo corpus (2 sessions x 2 dialogs x 4 turns, ~1.5 min of ASR speech), made once."""
    return background.start("tiny_demo").result()


def start_recipe_run(bg, folder: str, recipe: str, options):
    """A background run of ``recipe`` in ``<tmp>/<folder>/exp`` on the tiny demo corpus with the options that
    ``options(root)`` returns (it may first write what they name into ``root``); its result is ``(exp, proc)``."""
    demo, root = bg.start("tiny_demo"), bg.tmp.mktemp(folder)

    def build():
        extra = options(root)
        return root / "exp", run_recipe(recipe, root / "exp", demo.result(), extra)

    return bg.run(build)


def upstream_options(root) -> list[str]:
    sys.path.insert(0, os.path.join(REPO, "utils"))
    from make_tiny_upstream import make_tiny_upstream

    return ["--upstream", make_tiny_upstream("wavlm", str(root / "wavlm-tiny")), *UPSTREAM_TINY]


def ctc_options(root) -> list[str]:
    from corpus_fixtures import write_csv_corpus, write_ravdess

    return CTC_TINY + ["--eval-corpus", "ravdess", "--eval-root", write_ravdess(str(root / "ravdess")),
                       "--eval-corpus", "csv", "--eval-root", write_csv_corpus(str(root / "csvcorpus"), attributes=True),
                       "--eval-label-map", "happy:hap,sad:sad"]


starts("upstream_exp")(lambda bg, session: start_recipe_run(bg, "upstream", "upstream_probe", upstream_options))
starts("ctc_exp")(lambda bg, session: start_recipe_run(bg, "ctc", "ctc_transfer", ctc_options))
starts("las_exp")(lambda bg, session: start_recipe_run(bg, "las", "las_adapt", lambda root: LAS_TINY))


@pytest.fixture(scope="session")
def upstream_exp(background):
    """recipes/upstream_probe end to end on the tiny demo corpus with a tiny random WavLM (2 layers of 32)."""
    return background.start("upstream_exp").result()


@pytest.fixture(scope="session")
def ctc_exp(background):
    """recipes/ctc_transfer end to end on the tiny demo corpus with tiny models (recipe_runs.CTC_TINY),
    scored on a RAVDESS-layout and a CSV evaluation corpus too (the CSV map leaves training class ang
    without data); shared by the pipeline, cross-corpus and inference tests, which copy it before
    changing anything."""
    return background.start("ctc_exp").result()


@pytest.fixture(scope="session")
def las_exp(background):
    """recipes/las_adapt end to end on the tiny demo corpus (per-fold adapted LAS, IAAN; recipe_runs.LAS_TINY)."""
    return background.start("las_exp").result()

