"""EmoDB preparer on a tiny corpus in the real layout (wav/<spk><text><emotion><version>.wav, a misnamed file)."""

import logging
import re

import pytest

import prepare_emodb
from ser_modules.data.corpus import resolve_label_map
from ser_modules.data.folds import load_folds
from ser_modules.utils.fileio import ManifestError, read_manifest

from corpus_fixtures import EMODB_FILES, write_emodb, write_wav as write

FILES = EMODB_FILES


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "emodb"
    write_emodb(str(root))
    return root


def test_read_emodb_rows(corpus, caplog):
    caplog.set_level(logging.INFO)
    frame = prepare_emodb.read_emodb(str(corpus)).set_index("ID")
    assert sorted(frame.index) == [f"emodb-{s}" for s in FILES]
    assert frame.loc["emodb-03a01Fa"].to_dict() == {
        "wav": str(corpus / "wav" / "03a01Fa.wav"), "duration": 0.25, "speaker": "emodb-03", "gender": "M",
        "label": "happiness", "transcript": "Der Lappen liegt auf dem Eisschrank."}
    # every file's transcript is the documented sentence of its text code (characters 3-5)
    assert frame.loc["emodb-09b01Lc", "transcript"] == "Was sind denn das für Tüten, die da unter dem Tisch stehen?"
    assert frame.loc["emodb-16b10Ta", "transcript"] == "Die wird auf dem Platz sein, wo wir sie immer hinlegen."
    assert all(frame.loc[f"emodb-{s}", "transcript"] == prepare_emodb.TEXTS[s[2:5]] for s in FILES)
    assert {i: frame.loc[f"emodb-{i}", "label"] for i in ("08a02Wb", "09b01Lc", "10a04Ea", "11b02Aa", "12a05Ta",
                                                          "13b03Na")} == {
        "08a02Wb": "anger", "09b01Lc": "boredom", "10a04Ea": "disgust", "11b02Aa": "fear", "12a05Ta": "sadness",
        "13b03Na": "neutral"}
    assert dict(frame.groupby("speaker")["gender"].first()) == {
        "emodb-03": "M", "emodb-08": "F", "emodb-09": "F", "emodb-10": "M", "emodb-11": "M", "emodb-12": "M",
        "emodb-13": "F", "emodb-14": "F", "emodb-15": "M", "emodb-16": "F"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "03a01F.wav" in warnings[0]
    assert any("11 utterances kept" in r.getMessage() and "1 misnamed" in r.getMessage() for r in caplog.records)


def test_prepare_default_leave_one_speaker_out(corpus, tmp_path):
    out = tmp_path / "out"
    summary = prepare_emodb.prepare_emodb(str(corpus), str(out))
    assert summary["protocols"]["default"]["folds"] == 10
    assert summary["language"] == "de"  # German transcripts: stage 6 notes the mismatch with the English ASR
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    order = ["08", "03", "09", "10", "13", "11", "14", "12", "16", "15"]  # F and M interleaved
    assert [(f.test_speakers, f.valid_speakers) for f in folds] == [
        ([f"emodb-{s}"], [f"emodb-{order[(i + 1) % 10]}"]) for i, s in enumerate(order)]
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    assert (manifest["language"] == "de").all() and (manifest["transcript"] != "").all()
    speaker_of = dict(zip(manifest["ID"], manifest["speaker"]))
    assert sorted(folds[1].test) == ["emodb-03a01Fa", "emodb-03a02Na"]
    for fold in folds:
        assert not {speaker_of[i] for i in fold.train + fold.valid} & set(fold.test_speakers)
        assert len(fold.train) + len(fold.valid) + len(fold.test) == 11


def test_prepare_iemocap4(corpus, tmp_path):
    out = tmp_path / "out"
    prepare_emodb.prepare_emodb(str(corpus), str(out), label_map=resolve_label_map("iemocap4"))
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    # boredom (09), disgust (10) and fear (11) dropped with their speakers
    assert manifest.set_index("ID")["emotion"].to_dict() == {
        "emodb-03a01Fa": "hap", "emodb-03a02Na": "neu", "emodb-08a02Wb": "ang", "emodb-12a05Ta": "sad",
        "emodb-13b03Na": "neu", "emodb-14a07Fb": "hap", "emodb-15b09Wa": "ang", "emodb-16b10Ta": "sad"}
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    assert [f.test_speakers[0] for f in folds] == [f"emodb-{s}" for s in ("08", "03", "13", "12", "14", "15", "16")]


def test_main_cli(corpus, tmp_path):
    out = tmp_path / "cli"
    prepare_emodb.main(["--root", str(corpus), "--out", str(out), "--k", "2"])
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    assert [f.test_speakers for f in folds] == [["emodb-08", "emodb-03"], ["emodb-09", "emodb-10"],
                                                ["emodb-13", "emodb-11"], ["emodb-14", "emodb-12"],
                                                ["emodb-16", "emodb-15"]]


def test_unknown_emotion_letter_names_the_file(corpus):
    write(str(corpus / "wav" / "03a04Xa.wav"))
    with pytest.raises(ManifestError, match=re.escape("03a04Xa.wav") + ".*emotion letter 'X'"):
        prepare_emodb.read_emodb(str(corpus))


def test_unknown_speaker_names_the_file(corpus):
    write(str(corpus / "wav" / "07a01Fa.wav"))
    with pytest.raises(ManifestError, match=re.escape("07a01Fa.wav") + ".*speaker '07'"):
        prepare_emodb.read_emodb(str(corpus))


def test_unknown_text_code_names_the_file(corpus):
    write(str(corpus / "wav" / "03a03Fa.wav"))
    with pytest.raises(ManifestError, match=re.escape("03a03Fa.wav") + ".*text code 'a03'"):
        prepare_emodb.read_emodb(str(corpus))
