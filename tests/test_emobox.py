"""EmoBox's protocol as a fold scheme: its JSONL folds matched to a prepared corpus, its classes checked,
validation carved out of training by the stated rule, and its metrics (UA, WA, macro F1)."""

import os

import numpy as np
import pandas as pd
import pytest
from corpus_fixtures import RAVDESS_SPEECH, write_emobox_ravdess, write_ravdess
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

import prepare_ravdess
from ser_modules.data.emobox import emobox_folds, validation_split
from ser_modules.data.folds import check_speaker_independence, load_folds
from ser_modules.ser.metrics import classification_metrics
from ser_modules.utils.fileio import ManifestError


@pytest.fixture
def ravdess_full(tmp_path):
    """The RAVDESS fixture prepared (protocol ``full``: all 8 classes) and EmoBox's folds of it."""
    root = write_ravdess(str(tmp_path / "RAVDESS"))
    prepare_ravdess.prepare_ravdess(root, str(tmp_path / "emotion"))
    manifest = pd.read_csv(tmp_path / "emotion" / "full" / "manifest.csv", keep_default_na=False, dtype=str)
    return manifest, write_emobox_ravdess(str(tmp_path / "EmoBox"))


def test_ravdess_protocols_full_and_iemocap4_beside_default(tmp_path):
    root = write_ravdess(str(tmp_path / "RAVDESS"))
    summary = prepare_ravdess.prepare_ravdess(root, str(tmp_path / "emotion"))
    assert set(summary["protocols"]) == {"default", "full", "iemocap4"}
    assert sorted(summary["protocols"]["full"]["classes"]) == sorted(
        ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"])
    # iemocap4: calm joins neutral; fearful, disgust and surprised are left out
    assert summary["protocols"]["iemocap4"]["classes"] == {"ang": 2, "hap": 2, "neu": 3, "sad": 2}
    # a protocol asked by one of those names keeps the map it was asked with
    mine = prepare_ravdess.prepare_ravdess(root, str(tmp_path / "mine"), label_map={"sad": "low", "angry": "high"},
                                           protocol="full")
    assert mine["protocols"]["full"]["classes"] == {"high": 2, "low": 2}


def test_emobox_folds_keep_its_test_sets_and_validate_on_held_out_speakers(ravdess_full):
    manifest, emobox = ravdess_full
    folds, summary = emobox_folds(manifest, emobox, "ravdess")
    assert [f.name for f in folds] == ["fold1", "fold2", "fold3"]
    speaker = dict(zip(manifest["ID"], manifest["speaker"]))
    assert {speaker[i] for i in folds[0].test} == {"ravdess-01", "ravdess-02"}
    assert sorted(folds[0].test) == sorted(f"ravdess-{s}" for a, s, _ in RAVDESS_SPEECH if a in ("Actor_01", "Actor_02"))
    # 4 training speakers: 10% rounds to 1, made 2 for one female and one male, the next fold's test actors
    assert folds[0].valid_speakers == ["ravdess-03", "ravdess-04"] and folds[2].valid_speakers == ["ravdess-01", "ravdess-02"]
    for fold in folds:
        assert not {speaker[i] for i in fold.valid} & {speaker[i] for i in fold.train}
        assert len(fold.train) + len(fold.valid) + len(fold.test) == len(manifest)
    check_speaker_independence(manifest, folds)
    assert summary["classes"] == {"Angry": "angry", "Calm": "calm", "Disgust": "disgust", "Fear": "fearful",
                                  "Happy": "happy", "Neutral": "neutral", "Sad": "sad", "Surprise": "surprised"}
    assert not summary["shared_speakers"]


def test_a_key_matching_no_file_is_refused_with_one_line(ravdess_full, tmp_path):
    manifest, _ = ravdess_full
    emobox = write_emobox_ravdess(str(tmp_path / "EmoBox2"), extra_key="ravdess-03-01-04-01-01-01-24")
    with pytest.raises(ManifestError) as err:
        emobox_folds(manifest, emobox, "ravdess")
    message = str(err.value)
    assert "\n" not in message
    assert "fold_1: EmoBox key 'ravdess-03-01-04-01-01-01-24' matches no utterance of the corpus (1 of 5 keys " \
           "unmatched" in message


def test_the_protocol_must_have_emobox_classes(tmp_path, ravdess_full):
    _, emobox = ravdess_full
    four = pd.read_csv(tmp_path / "emotion" / "iemocap4" / "manifest.csv", keep_default_na=False, dtype=str)
    with pytest.raises(ManifestError, match="matches no utterance"):  # fearful etc. are not in iemocap4
        emobox_folds(four, emobox, "ravdess")
    merged = pd.read_csv(tmp_path / "emotion" / "full" / "manifest.csv", keep_default_na=False, dtype=str)
    merged.loc[merged["emotion"] == "calm", "emotion"] = "neutral"  # two EmoBox classes onto one
    with pytest.raises(ManifestError, match="does not correspond to one class of the protocol"):
        emobox_folds(merged, emobox, "ravdess")


def test_rejected_files_leave_their_folds_and_are_counted(ravdess_full):
    manifest, emobox = ravdess_full
    gone = manifest.iloc[[0]]
    folds, summary = emobox_folds(manifest.iloc[1:], emobox, "ravdess", rejected=gone[["ID", "wav"]])
    assert summary["rejected_left_out"] == 1
    assert all(gone["ID"].iloc[0] not in f.train + f.valid + f.test for f in folds)


def test_shared_speakers_validate_on_a_stratified_tenth_of_training_utterances():
    ids = [f"u{i}" for i in range(40)]
    speaker = {i: f"s{n % 4}" for n, i in enumerate(ids)}
    emotion = {i: "ab"[n % 2] for n, i in enumerate(ids)}
    train, valid, shared = validation_split(ids[:30], ids[30:], [], speaker, {}, emotion)
    assert shared and len(valid) == 4 and sorted(emotion[i] for i in valid) == ["a", "a", "b", "b"]
    assert sorted(train + valid) == sorted(ids[:30])


def test_shared_speaker_folds_pass_the_independence_check_only_when_marked(tmp_path):
    from ser_modules.data.folds import Fold, save_folds

    manifest = pd.DataFrame({"ID": ["a", "b", "c"], "speaker": ["s", "s", "s"]})
    fold = Fold("fold1", ["s"], [], train=["a"], valid=["b"], test=["c"])
    with pytest.raises(ManifestError, match="also in train/valid"):
        check_speaker_independence(manifest, [fold])
    fold.shared_speakers = True
    check_speaker_independence(manifest, [fold])
    save_folds(str(tmp_path / "f.json"), "emobox", [fold])
    assert load_folds(str(tmp_path / "f.json"))[0].shared_speakers
    fold.shared_speakers = False
    save_folds(str(tmp_path / "g.json"), "loso", [fold])
    assert "shared_speakers" not in open(tmp_path / "g.json").read()  # other schemes' files stay as they were


def test_ua_wa_and_macro_f1_equal_scikit_learn_and_a_hand_computation():
    m = classification_metrics(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"], classes=["a", "b", "c"])
    # UA: recalls 1/2, 2/2, 0/1; WA: 3 of 5; F1: a 1/2, b 2*(2/3)/(2/3+1) = 0.8, c 0
    assert m == pytest.approx({"UA": 0.5, "WA": 0.6, "F1": (0.5 + 0.8 + 0.0) / 3})
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(8)]
    y = rng.integers(0, 8, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 8, 300))
    m = classification_metrics([classes[i] for i in y], [classes[i] for i in pred], classes=classes)
    assert m["UA"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["WA"] == pytest.approx(accuracy_score(y, pred))
    assert m["F1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_prepare_data_writes_emobox_folds_of_the_full_protocol(tmp_path):
    import subprocess
    import sys

    from recipe_runs import REPO

    root = write_ravdess(str(tmp_path / "RAVDESS"))
    emobox = write_emobox_ravdess(str(tmp_path / "EmoBox"))
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "local", "prepare_data.py"), "--emotion-corpus", "ravdess",
                           "--emotion-root", root, "--out", str(out), "--skip-asr", "--nj", "1", "--emobox-dir",
                           os.path.join(emobox, "data")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folds = load_folds(str(out / "emotion" / "full" / "folds_emobox.json"))
    assert len(folds) == 3 and "EmoBox folds of ravdess" in proc.stderr


def test_keys_match_by_id_by_id_without_the_corpus_prefix_or_by_the_audio_file_name():
    from ser_modules.data.emobox import key_matcher

    manifest = pd.DataFrame({"ID": ["Ses01F_impro04_F000", "cremad-1052_WSI_ANG_XX", "emodb-03a02Wb"],
                             "wav": ["/d/Session1/Ses01F_impro04_F000.wav", "/d/AudioWAV/1052_WSI_ANG_XX.wav",
                                     "/d/wav/03a02Wb.wav"]})
    match = key_matcher(manifest)
    assert match({"key": "iemocap-Ses01F_impro04_F000"}) == "Ses01F_impro04_F000"  # EmoBox's IEMOCAP keys
    assert match({"key": "cremad-1052-WSI-ANG-XX", "wav": "downloads/cremad/AudioWAV/1052_WSI_ANG_XX.wav"}) == \
        "cremad-1052_WSI_ANG_XX"  # EmoBox's CREMA-D keys spell the file name with hyphens
    assert match({"key": "emodb-03a02Wb"}) == "emodb-03a02Wb"
    assert match({"key": "emodb-99x99Xx", "wav": "downloads/emodb/wav/99x99Xx.wav"}) is None
