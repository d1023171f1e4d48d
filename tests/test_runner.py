"""The recipe runner: options, errors, stage 1 on a corpus, resuming."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["ctc_transfer", "las_adapt"]


def run(recipe, *args, check=True):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join(REPO, "recipes", recipe, "run.sh"), *args], env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("recipe", RECIPES)
def test_help_lists_every_option(recipe):
    out = run(recipe, "--help").stdout
    for option in ["--stage", "--stop-stage", "--emotion-corpus", "--emotion-root", "--asr-corpus", "--asr-root",
                   "--librispeech-subsets", "--exp-dir", "--device", "--ngpu", "--seed", "--size", "--nj", "key=value"]:
        assert option in out, option
    for n in range(1, 7):
        assert f"\n  {n}  " in out


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--emotion-corpus", "iemocap"], "--emotion-root is required"),
    (["--emotion-corpus", "nope"], "unknown --emotion-corpus 'nope'"),
    (["--asr-corpus", "librispeech"], "give one --asr-root per non-demo --asr-corpus"),
    (["no_such_key=3"], "no stage file"),
    (["--eval-corpus", "timit"], "unknown --eval-corpus 'timit'"),
    (["--eval-root", "x", "--eval-corpus", "emodb"], "--eval-root belongs to an --eval-corpus given before it"),
])
def test_bad_options_fail_clearly(tmp_path, args, message):
    proc = run("ctc_transfer", "--exp-dir", str(tmp_path / "exp"), "--stop-stage", "0", *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_an_evaluation_corpus_needs_stage_1(tmp_path):
    proc = run("ctc_transfer", "--exp-dir", str(tmp_path / "exp"), "--stage", "4", "--eval-corpus", "emodb",
               "--eval-root", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--eval-corpus is prepared by stage 1: start at --stage 1" in proc.stderr


@pytest.mark.slow
def test_stage1_on_real_layouts_and_resume(tiny_demo, tmp_path):
    exp = tmp_path / "exp"
    args = ["--stop-stage", "1", "--exp-dir", str(exp), "--emotion-corpus", "iemocap", "--emotion-root",
            tiny_demo["iemocap"], "--asr-corpus", "librispeech", "--asr-root", tiny_demo["librispeech"]]
    # Real corpora default to --size paper, whose LibriSpeech is the papers' 960 h: this tree has train-clean-100.
    refused = run("las_adapt", *args, check=False)
    assert refused.returncode != 0 and "LibriSpeech subset(s) train-clean-360, train-other-500 not found" in refused.stderr
    assert "Traceback" not in refused.stderr
    args += ["--librispeech-subsets", "train=train-clean-100;dev=dev-clean;test=test-clean"]
    proc = run("las_adapt", *args)
    assert "stage 1: data preparation" in proc.stderr
    for protocol in ("standard", "lakomkin2018"):
        for scheme in ("loso", "lospk"):
            assert (exp / "data" / "emotion" / protocol / f"folds_{scheme}.json").is_file()
    manifest = pd.read_csv(exp / "data" / "emotion" / "standard" / "manifest.csv")
    assert len(manifest) == tiny_demo["target_class_turns"]
    asr = {s: pd.read_csv(exp / "data" / "asr" / f"{s}.csv") for s in ("train", "dev", "test")}
    assert set(asr["train"]["speaker"]).isdisjoint(asr["test"]["speaker"])
    summary = json.loads((exp / "data" / "prepare_summary.json").read_text())
    assert (summary["emotion_corpus"], summary["emotion_language"], summary["asr_language"]) == ("iemocap", "en", "en")
    assert "(las_adapt) stage 1" in (exp / "run.log").read_text()
    # A rerun with the same corpora skips the finished stage.
    again = run("las_adapt", *args)
    assert "data already prepared" in again.stderr


def test_stage2_configuration_key_ignores_evaluation_keys_paths_and_wrapping():
    from ser_modules.stages.asr_pretrain import EVAL_ONLY_KEYS
    from ser_modules.utils.hparams import canonical_config

    a = "seed: 1\noutput_folder: /e/x/asr\ndecoders: [greedy]\nbeam_size: 4\nlr: 0.1\nmodel: !new:M\n    h: 8\n"
    moved = "seed: 1\noutput_folder: \n  /f/x/asr\ndecoders:\n- greedy\n- beam\nbeam_size: 10\nlr: 0.1\nmodel: !new:M\n    h: 8\n"
    assert canonical_config(a, "/e/x", EVAL_ONLY_KEYS) == canonical_config(moved, "/f/x", EVAL_ONLY_KEYS)
    assert canonical_config(a, "/e/x") != canonical_config(moved, "/f/x")  # the full key still sees decoding
    for changed in (a.replace("lr: 0.1", "lr: 0.2"), a.replace("h: 8", "h: 9")):
        assert canonical_config(changed, "/e/x", EVAL_ONLY_KEYS) != canonical_config(a, "/e/x", EVAL_ONLY_KEYS)


def gpu_count(tmp_path, device: str) -> tuple[str, bool]:
    """``gpu_count`` of utils/recipe.sh for ``--device``; and whether it started Python to ask torch."""
    marker = tmp_path / "asked"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\necho 3\n")  # a stand-in 'torch' that sees 3 GPUs
    fake.chmod(0o755)
    script = f". {os.path.join(REPO, 'utils', 'recipe.sh')}; device={device}; gpu_count"
    out = subprocess.run(["bash", "-c", script], env={**os.environ, "PYTHON": str(fake)}, capture_output=True,
                         text=True, check=True).stdout.strip()
    return out, marker.exists()


def test_gpu_count_asks_torch_only_where_a_gpu_device_exists(tmp_path):
    import glob

    assert gpu_count(tmp_path, "cpu") == ("0", False)
    devices = glob.glob("/dev/nvidia[0-9]*") + [d for d in ("/dev/kfd", "/dev/dxg") if os.path.exists(d)]
    # Without a device node torch can see no GPU: no 1.5 s torch import to learn it; with one, torch is asked.
    assert gpu_count(tmp_path, "auto") == (("3", True) if devices else ("0", False))
