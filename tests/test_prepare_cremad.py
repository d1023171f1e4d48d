"""CREMA-D preparer on a tiny corpus in the real layout (AudioWAV/, VideoDemographics.csv, a misnamed file)."""

import logging
import os
import re

import pytest

import prepare_cremad
from ser_modules.data.corpus import resolve_label_map
from ser_modules.data.folds import load_folds, speaker_groups
from ser_modules.utils.fileio import ManifestError, read_manifest

from corpus_fixtures import CREMAD_FILES, write_cremad, write_wav as write

FILES = CREMAD_FILES


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "CREMA-D"
    write_cremad(str(root))
    return root


def test_read_cremad_rows(corpus, caplog):
    caplog.set_level(logging.INFO)
    frame = prepare_cremad.read_cremad(str(corpus)).set_index("ID")
    assert sorted(frame.index) == sorted(f"cremad-{n[:-4]}" for n, _ in FILES)
    assert frame.loc["cremad-1001_DFA_ANG_XX"].to_dict() == {
        "wav": str(corpus / "AudioWAV" / "1001_DFA_ANG_XX.wav"), "duration": 0.1, "speaker": "cremad-1001",
        "gender": "M", "label": "anger", "transcript": "Don't forget a jacket", "intensity": "unspecified"}
    assert frame.loc["cremad-1004_IWL_ANG_LO", "duration"] == 0.3
    assert frame.loc["cremad-1002_TIE_SAD_LO", "transcript"] == "That is exactly what happened"
    assert frame.loc["cremad-1003_IWW_FEA_MD", "label"] == "fear"
    assert frame["label"].value_counts().to_dict() == {"anger": 2, "neutral": 2, "happy": 1, "sad": 1, "fear": 1,
                                                       "disgust": 1}
    assert dict(frame.groupby("speaker")["gender"].first()) == {
        "cremad-1001": "M", "cremad-1002": "F", "cremad-1003": "F", "cremad-1004": "M"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1005_DFA_ANG.wav" in warnings[0]
    assert any("8 utterances kept" in r.getMessage() and "1 misnamed" in r.getMessage() for r in caplog.records)


def test_without_demographics_genders_are_empty(corpus):
    os.remove(corpus / "VideoDemographics.csv")
    frame = prepare_cremad.read_cremad(str(corpus))
    assert (frame["gender"] == "").all()


def test_prepare_k1_gender_interleaved(corpus, tmp_path):
    out = tmp_path / "out"
    prepare_cremad.prepare_cremad(str(corpus), str(out), k=1)
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    # F: 1002, 1003; M: 1001, 1004 -> 1002, 1001, 1003, 1004
    assert [(f.test_speakers, f.valid_speakers) for f in folds] == [
        (["cremad-1002"], ["cremad-1001"]), (["cremad-1001"], ["cremad-1003"]),
        (["cremad-1003"], ["cremad-1004"]), (["cremad-1004"], ["cremad-1002"])]
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    speaker_of = dict(zip(manifest["ID"], manifest["speaker"]))
    for fold in folds:
        assert (len(fold.train), len(fold.valid), len(fold.test)) == (4, 2, 2)
        assert not {speaker_of[i] for i in fold.train + fold.valid} & set(fold.test_speakers)


def test_prepare_iemocap4(corpus, tmp_path):
    out = tmp_path / "out"
    summary = prepare_cremad.prepare_cremad(str(corpus), str(out), label_map=resolve_label_map("iemocap4"), k=1)
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    # fear and disgust dropped: actor 1003 disappears
    assert sorted(manifest["ID"]) == ["cremad-1001_DFA_ANG_XX", "cremad-1001_IEO_HAP_HI", "cremad-1002_IOM_NEU_XX",
                                      "cremad-1002_TIE_SAD_LO", "cremad-1004_IWL_ANG_LO", "cremad-1004_MTI_NEU_XX"]
    assert summary["protocols"]["default"]["classes"] == {"ang": 2, "hap": 1, "neu": 2, "sad": 1}
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    assert [f.test_speakers for f in folds] == [["cremad-1002"], ["cremad-1001"], ["cremad-1004"]]


def test_default_k_groups_nine_actors(tmp_path):
    root = tmp_path / "CREMA-D"
    for actor in range(1001, 1029):
        write(str(root / "AudioWAV" / f"{actor}_DFA_{'NEU' if actor % 2 else 'ANG'}_XX.wav"), 0.1)  # 2 classes
    out = tmp_path / "out"
    prepare_cremad.prepare_cremad(str(root), str(out))
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    # 28 actors in groups of 9: the lone 28th joins the third group
    assert [f.test_speakers for f in folds] == [[f"cremad-{a}" for a in range(1001, 1010)],
                                                [f"cremad-{a}" for a in range(1010, 1019)],
                                                [f"cremad-{a}" for a in range(1019, 1029)]]
    # the full corpus: 91 actors -> 10 folds (nine of 9 actors, one of 10)
    groups = speaker_groups([str(a) for a in range(1001, 1092)], prepare_cremad.DEFAULT_K)
    assert [len(g) for g in groups] == [9] * 9 + [10]


def test_default_k_shrinks_for_a_corpus_with_few_actors(corpus, tmp_path, caplog):
    # 4 actors cannot make 3 groups of the default 9: leave one actor out instead (the fixture's case)
    summary = prepare_cremad.prepare_cremad(str(corpus), str(tmp_path / "out"))
    assert summary["protocols"]["default"]["k"] == 1 and summary["protocols"]["default"]["folds"] == 4
    assert "4 speakers make fewer than 3 groups of the default k=9; using k=1" in caplog.text
    assert summary["language"] == "en"
    with pytest.raises(ManifestError, match="needs at least 3 speaker groups.*give a smaller --k"):
        prepare_cremad.prepare_cremad(str(corpus), str(tmp_path / "out2"), k=2)  # an explicit k is kept


def test_main_cli(corpus, tmp_path):
    out = tmp_path / "cli"
    prepare_cremad.main(["--root", str(corpus), "--out", str(out), "--k", "1", "--label-map", "iemocap4"])
    assert len(read_manifest(str(out / "default" / "manifest.csv"))) == 6


def test_unknown_emotion_code_names_the_file(corpus):
    write(str(corpus / "AudioWAV" / "1002_DFA_XYZ_XX.wav"), 0.1)
    with pytest.raises(ManifestError, match=re.escape("1002_DFA_XYZ_XX.wav") + ".*emotion code 'XYZ'"):
        prepare_cremad.read_cremad(str(corpus))


def test_bad_demographics_names_the_file(corpus):
    (corpus / "VideoDemographics.csv").write_text("ActorID,Sex\n1001,Male\n1002,X\n")
    with pytest.raises(ManifestError, match=r"VideoDemographics\.csv:3.*'X'"):
        prepare_cremad.read_cremad(str(corpus))


def test_missing_audio_folder(tmp_path):
    with pytest.raises(ManifestError, match="AudioWAV"):
        prepare_cremad.read_cremad(str(tmp_path))
