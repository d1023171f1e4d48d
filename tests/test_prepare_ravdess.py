"""RAVDESS preparer on a tiny corpus in the real layout (48 kHz, one stereo file, a song file, a misnamed file)."""

import json
import logging
import os
import re
from functools import partial

import pytest
import soundfile as sf

import prepare_ravdess
from ser_modules.data.audio import load_audio
from ser_modules.data.folds import load_folds
from ser_modules.utils.fileio import ManifestError, read_manifest

from corpus_fixtures import RAVDESS_SPEECH, RAVDESS_SR, write_ravdess, write_wav

SR = RAVDESS_SR
SPEECH = RAVDESS_SPEECH
LABELS = {
    "01": "neutral", "06": "fearful", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "07": "disgust",
    "08": "surprised",
}
KIDS, DOGS = "Kids are talking by the door", "Dogs are sitting by the door"
write = partial(write_wav, sr=SR)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "RAVDESS"
    write_ravdess(str(root))
    return root


def test_read_ravdess_rows(corpus, caplog):
    caplog.set_level(logging.INFO)
    frame = prepare_ravdess.read_ravdess(str(corpus))
    assert len(frame) == 12
    expected_ids = sorted(f"ravdess-{stem}" for _, stem, _ in SPEECH)
    assert sorted(frame["ID"]) == expected_ids
    row = frame.set_index("ID").loc["ravdess-03-01-05-02-01-02-03"]
    assert (row["speaker"], row["gender"], row["label"], row["transcript"], row["intensity"]) == (
        "ravdess-03", "M", "angry", KIDS, "strong")
    assert row["duration"] == 0.15
    assert row["wav"] == str(corpus / "Actor_03" / "03-01-05-02-01-02-03.wav") and os.path.isabs(row["wav"])
    row = frame.set_index("ID").loc["ravdess-03-01-03-02-02-01-02"]
    assert (row["speaker"], row["gender"], row["label"], row["transcript"]) == ("ravdess-02", "F", "happy", DOGS)
    assert frame.set_index("ID").loc["ravdess-03-01-01-01-01-01-01", "duration"] == 0.2
    for _, stem, _ in SPEECH:
        assert frame.set_index("ID").loc[f"ravdess-{stem}", "label"] == LABELS[stem[6:8]]
    assert dict(frame.groupby("speaker")["gender"].first()) == {
        "ravdess-01": "M", "ravdess-02": "F", "ravdess-03": "M", "ravdess-04": "F", "ravdess-05": "M",
        "ravdess-06": "F"}
    assert frame["label"].value_counts().to_dict() == {
        "neutral": 2, "happy": 2, "sad": 2, "angry": 2, "fearful": 1, "calm": 1, "disgust": 1, "surprised": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "notes.wav" in warnings[0]
    assert any("12 utterances kept" in r.getMessage() and "1 misnamed" in r.getMessage()
               and "1 song or video" in r.getMessage() for r in caplog.records)


def test_stereo_48k_file_loads_as_16k_mono(corpus):
    frame = prepare_ravdess.read_ravdess(str(corpus))
    wav = frame.set_index("ID").loc["ravdess-03-01-01-01-01-01-01", "wav"]
    assert sf.info(wav).channels == 2 and sf.info(wav).samplerate == 48000
    audio = load_audio(wav)
    assert audio.ndim == 1 and audio.shape[0] == 3200  # 0.2 s at 16 kHz
    assert abs(float(audio[1000:2000].mean()) - 0.5) < 1e-3  # channels averaged


def test_prepare_default_folds(corpus, tmp_path):
    out = tmp_path / "out"
    summary = prepare_ravdess.prepare_ravdess(str(corpus), str(out))
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    assert len(manifest) == 12 and summary["utterances"] == 12 and summary["speakers"] == 6
    assert summary["language"] == "en" and (manifest["transcript"] != "").all()
    assert (manifest["emotion"] == manifest["label"]).all()
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    # k=2, genders interleaved F, M: groups (02, 01), (04, 03), (06, 05)
    assert [(f.test_speakers, f.valid_speakers) for f in folds] == [
        (["ravdess-02", "ravdess-01"], ["ravdess-04", "ravdess-03"]),
        (["ravdess-04", "ravdess-03"], ["ravdess-06", "ravdess-05"]),
        (["ravdess-06", "ravdess-05"], ["ravdess-02", "ravdess-01"]),
    ]
    speaker_of = dict(zip(manifest["ID"], manifest["speaker"]))
    for fold in folds:
        assert len(fold.test) == 4 and len(fold.valid) == 4 and len(fold.train) == 4
        assert not {speaker_of[i] for i in fold.train + fold.valid} & set(fold.test_speakers)
        assert {speaker_of[i] for i in fold.test} == set(fold.test_speakers)
    assert json.loads((out / "summary.json").read_text())["protocols"]["default"]["folds"] == 3


def test_prepare_iemocap4_label_map(corpus, tmp_path):
    from ser_modules.data.corpus import resolve_label_map

    out = tmp_path / "out"
    summary = prepare_ravdess.prepare_ravdess(str(corpus), str(out), label_map=resolve_label_map("iemocap4"))
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    # fearful (A01), disgust (A04), surprised (A06) dropped; calm -> neu
    assert len(manifest) == 9
    assert manifest["emotion"].value_counts().to_dict() == {"neu": 3, "hap": 2, "sad": 2, "ang": 2}
    assert manifest.set_index("ID").loc["ravdess-03-01-02-01-01-01-02", "emotion"] == "neu"
    assert "ravdess-03-01-06-02-02-01-01" not in set(manifest["ID"])
    assert summary["protocols"]["default"]["classes"] == {"ang": 2, "hap": 2, "neu": 3, "sad": 2}
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    assert [len(f.test) for f in folds] == [3, 3, 3]  # (02,01): 2+1, (04,03): 1+2, (06,05): 1+2


def test_main_cli(corpus, tmp_path):
    out = tmp_path / "cli"
    prepare_ravdess.main(["--root", str(corpus), "--out", str(out), "--label-map", "angry:ang,sad:sad,happy:hap",
                          "--k", "1", "--protocol", "three"])
    manifest = read_manifest(str(out / "three" / "manifest.csv"))
    assert sorted(manifest["emotion"]) == ["ang", "ang", "hap", "hap", "sad", "sad"]
    folds = load_folds(str(out / "three" / "folds_lkso.json"))
    # speakers left: 02 (happy), 03 (sad, angry), 04 (sad), 05 (angry, happy); F, M interleaved
    assert [f.test_speakers for f in folds] == [["ravdess-02"], ["ravdess-03"], ["ravdess-04"], ["ravdess-05"]]


def test_unknown_emotion_code_names_the_file(corpus):
    write(str(corpus / "Actor_04" / "03-01-09-01-01-01-04.wav"), 0.1)
    with pytest.raises(ManifestError, match=re.escape("03-01-09-01-01-01-04.wav") + ".*emotion code '09'"):
        prepare_ravdess.read_ravdess(str(corpus))


def test_actor_folder_mismatch_names_the_file(corpus):
    write(str(corpus / "Actor_02" / "03-01-01-01-01-02-05.wav"), 0.1)
    with pytest.raises(ManifestError, match=re.escape("03-01-01-01-01-02-05.wav")):
        prepare_ravdess.read_ravdess(str(corpus))


def test_root_without_actor_folders(tmp_path):
    with pytest.raises(ManifestError, match="no Actor_XX folders"):
        prepare_ravdess.read_ravdess(str(tmp_path))
