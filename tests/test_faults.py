"""Faults a new user or a cluster meets, and what the toolkit guarantees about them (README,
"Reliability"): bad input stops with a one-line message naming the file or key; finished work is
never lost; a moved experiment is still finished; a signal stops a stage and its workers and a rerun
resumes to the results of an uninterrupted run; stages 3-5 share their work over ``--ngpu`` devices
and stage 5 over a cluster (submitit).

One tiny ``ctc_transfer`` experiment (DeepSpeech2 of one GRU of 16, a fine-tuned copy per fold, two
SER variants on two folds) is run once, uninterrupted; every other test works on a copy of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ser_modules.audio import AudioReadError, load_audio
from ser_modules.corpus import apply_label_map, resolve_label_map
from ser_modules.fileio import ManifestError
from ser_modules.hparams import HparamsError, check_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(REPO, "recipes", "ctc_transfer", "conf")
TINY = [
    "asr.n_epochs=2", "asr.rnn_layers=1", "asr.rnn_hidden=16", "asr.conv_channels=2", "asr.decoders=[greedy]",
    "adapt.variants=[finetuned]", "adapt.epochs_per_stage=2",
    "dump.dtype=float32", "dump.augmented_copies=1",
    "ser.variants=[{name: MP-1, type: mp, asr: pretrained, layer: gru1, max_epochs: 3},"
    " {name: baseline-8, type: baseline, hidden: 8, max_epochs: 2}]",
    "score.reference=baseline-8", "score.tsne=False", "score.loudness=False", "score.chance_runs=2",
]
SER_VARIANTS = ("MP-1", "baseline-8")
FOLDS = ("session1", "session2")


def run(exp, tiny_demo, *args, env=None, check=True) -> subprocess.CompletedProcess:
    """``recipes/ctc_transfer/run.sh`` on the tiny demo corpus with the tiny models."""
    cmd = ["bash", os.path.join(REPO, "recipes", "ctc_transfer", "run.sh"), "--exp-dir", str(exp), "--size", "demo",
           "--emotion-corpus", "iemocap", "--emotion-root", tiny_demo["iemocap"], "--asr-corpus", "librispeech",
           "--asr-root", tiny_demo["librispeech"], "--nj", "1", "--folds", "loso", *TINY, *args]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """The run failed with a message holding every needle, and no traceback."""
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def base(tiny_demo, tmp_path_factory):
    """The uninterrupted experiment, stages 1-6."""
    exp = tmp_path_factory.mktemp("faults") / "base"
    run(exp, tiny_demo)
    return exp


def copy_experiment(base, tmp_path, name="exp"):
    exp = tmp_path / name
    shutil.copytree(base, exp, symlinks=True)
    return exp


def write_wav(path, samples, sr=16000):
    sf.write(str(path), np.asarray(samples, dtype=np.float32), sr, subtype="FLOAT")
    return str(path)


# ----------------------------------------------------------------------------------------------
# Bad input: a one-line message naming the file or key, before anything is lost


def test_an_override_of_the_wrong_type_is_refused_before_any_stage_runs(tiny_demo, tmp_path):
    with pytest.raises(HparamsError, match=r"override ser.lr='abc': .*ser.yaml has lr: 0.0001 \(a number\)"):
        check_overrides(CONF, ["ser.lr=abc"])
    with pytest.raises(HparamsError, match=r"asr.n_epochs=1.5: .*n_epochs: \d+ \(an integer\)"):
        check_overrides(CONF, ["asr.n_epochs=1.5"])
    with pytest.raises(HparamsError, match=r"dropout=\[0.1\]: .* \(a number\), the override is a list"):
        check_overrides(CONF, ["dropout=[0.1]"])  # an unprefixed key is checked in every file that has it
    check_overrides(CONF, ["lr=1", "ser.early_stop_patience=3", "asr.decoders=[greedy, beam]"])  # int for float, null
    proc = run(tmp_path / "exp", tiny_demo, "ser.lr=abc", check=False)
    one_line_error(proc, "override ser.lr='abc'", "ser.yaml has lr: 0.0001")
    assert not (tmp_path / "exp" / "data").exists()  # refused before stage 1


@pytest.mark.parametrize("args,message", [
    (["--stage", "0"], "must be stage numbers 1-6, got '0'"),
    (["--stop-stage", "7"], "must be stage numbers 1-6, got '7'"),
    (["--stage", "5", "--stop-stage", "3"], "--stage 5 is after --stop-stage 3"),
])
def test_stage_numbers_are_checked(tiny_demo, tmp_path, args, message):
    one_line_error(run(tmp_path / "exp", tiny_demo, *args, check=False), message)


def test_audio_that_cannot_be_heard_is_an_error_naming_the_file(tmp_path):
    t = np.arange(1600) / 16000
    tone = 0.1 * np.sin(2 * np.pi * 220 * t)
    with pytest.raises(AudioReadError, match=r"nan.wav: 3 of 1600 samples are not finite"):
        load_audio(write_wav(tmp_path / "nan.wav", np.where(t < 3 / 16000, np.nan, tone)))
    with pytest.raises(AudioReadError, match=r"inf.wav: 1 of 1600 samples are not finite"):
        load_audio(write_wav(tmp_path / "inf.wav", np.where(t == 0, np.inf, tone)))
    with pytest.raises(AudioReadError, match=r"zero.wav: every sample is zero"):
        load_audio(write_wav(tmp_path / "zero.wav", np.zeros(1600)))
    assert load_audio(write_wav(tmp_path / "ok.wav", tone)).shape == (1600,)


def test_inference_reports_unusable_audio_per_file(base, tmp_path):
    from ser_modules.infer import EmotionRecognizer, main as infer_main

    t = np.arange(8000) / 16000
    tone = 0.1 * np.sin(2 * np.pi * 220 * t)
    files = {"nan": write_wav(tmp_path / "nan.wav", np.full(8000, np.nan)),
             "inf": write_wav(tmp_path / "inf.wav", np.where(t < 0.1, np.inf, tone)),
             "zero": write_wav(tmp_path / "zero.wav", np.zeros(8000)),
             "short": write_wav(tmp_path / "short.wav", tone[:160]),  # 10 ms: less than one 20 ms window
             "ok": write_wav(tmp_path / "ok.wav", tone)}
    for variant in SER_VARIANTS:
        rec = EmotionRecognizer.from_experiment(str(base), variant)
        rows = {name: row for name, row in zip(files, rec.predict_files(list(files.values())))}
        assert rows["ok"]["status"] == "ok" and rows["ok"]["emotion"] in rec.classes
        assert sum(rows["ok"][f"p_{c}"] for c in rec.classes) == pytest.approx(1, abs=1e-4)
        for name, message in [("nan", "not finite"), ("inf", "not finite"), ("zero", "every sample is zero"),
                              ("short", "shorter than the model's minimum of 20.0 ms")]:
            row = rows[name]
            assert row["status"] == "error" and row["emotion"] == "", (name, row)
            assert files[name] in row["error"] and message in row["error"], (name, row)
    assert infer_main([str(base), files["nan"], files["ok"], "--out", str(tmp_path / "out.csv")]) == 1


def test_stage4_stops_at_an_unusable_utterance_with_one_line(base, tiny_demo, tmp_path):
    exp = copy_experiment(base, tmp_path)
    shutil.rmtree(exp / "dump")
    bad = write_wav(tmp_path / "nan.wav", np.full(8000, np.nan))
    first = pd.read_csv(exp / "data" / "emotion" / "lakomkin2018" / "manifest.csv", dtype=str)["ID"].iloc[0]
    turns_csv = exp / "data" / "emotion" / "turns.csv"
    turns = pd.read_csv(turns_csv, keep_default_na=False, dtype=str)
    turns.loc[turns["ID"] == first, "wav"] = bad
    turns.to_csv(turns_csv, index=False)
    one_line_error(run(exp, tiny_demo, "--stage", "4", "--stop-stage", "4", check=False), f"{bad}: 8000 of 8000")
    turns.loc[turns["ID"] == first, ["wav", "duration"]] = [write_wav(tmp_path / "short.wav", np.full(100, 0.1)),
                                                            "0.00625"]
    turns.to_csv(turns_csv, index=False)
    one_line_error(run(exp, tiny_demo, "--stage", "4", "--stop-stage", "4", check=False),
                   "short.wav: utterance", "6.2 ms, shorter than the model's minimum of 20.0 ms")


def test_label_maps_keep_two_classes_or_fail():
    frame = pd.DataFrame({"ID": list("abcdef"), "label": ["ang", "hap", "neu", "sad", "exc", "fru"]})
    mapped = apply_label_map(frame, resolve_label_map("iemocap4"))  # IEMOCAP's short codes
    assert mapped["emotion"].tolist() == ["ang", "hap", "neu", "sad", "hap"]
    words = pd.DataFrame({"ID": list("abc"), "label": ["Angry", "SAD", "calm"]})  # any letter case
    assert apply_label_map(words, resolve_label_map("iemocap4"))["emotion"].tolist() == ["ang", "sad", "neu"]
    with pytest.raises(ManifestError, match=r"mycorpus: 1 class\(es\) \['sad'\] left .*labels in the corpus: "
                                            r"\['happy', 'sad'\]"):
        apply_label_map(pd.DataFrame({"ID": list("ab"), "label": ["happy", "sad"]}), {"sad": "sad"}, corpus="mycorpus")
    with pytest.raises(ManifestError, match=r"0 class\(es\)"):
        apply_label_map(frame, {"calm": "neu"})


def test_a_preparer_error_is_one_line(tmp_path):
    csv = tmp_path / "list.csv"
    for name in ("a", "b"):
        write_wav(tmp_path / f"{name}.wav", np.full(1600, 0.1))
    csv.write_text("path,speaker,label\na.wav,alice,sad\nb.wav,bob,sad\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "local", "prepare_csv.py"), "--root", str(csv), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    one_line_error(proc, "1 class(es) ['sad'] left")
