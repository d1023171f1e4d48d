"""Generic CSV preparer: relative and absolute paths, optional transcript/group/gender, bad rows."""

import re
from pathlib import Path

import pytest

import prepare_csv
from ser_modules.data.folds import load_folds
from ser_modules.utils.fileio import ManifestError, read_manifest

from corpus_fixtures import write_csv_corpus, write_wav as write


@pytest.fixture
def corpus(tmp_path):
    return Path(write_csv_corpus(str(tmp_path)))


def test_read_csv_rows(corpus):
    frame = prepare_csv.read_csv(str(corpus)).set_index("ID")
    assert list(frame.index) == ["a1", "a2", "b1", "c1", "c2", "d1"]
    assert frame.loc["a1"].to_dict() == {
        "wav": str(corpus.parent / "audio" / "a1.wav"), "duration": 0.1, "speaker": "alice", "gender": "",
        "label": "happy", "transcript": "hello there", "language": "", "session": "s1", "arousal": "", "valence": "",
        "dominance": ""}
    assert frame.loc["d1", "wav"] == str(corpus.parent.parent / "elsewhere" / "d1.flac")
    assert frame.loc["d1", "duration"] == 0.3 and frame.loc["c2", "duration"] == 0.2
    assert frame["session"].to_dict() == {"a1": "s1", "a2": "s1", "b1": "bob", "c1": "s2", "c2": "s2", "d1": "s3"}
    assert frame["transcript"].to_dict()["a2"] == ""


def test_prepare_k1_and_label_map(corpus, tmp_path):
    out = tmp_path / "out"
    summary = prepare_csv.prepare_csv(str(corpus), str(out), label_map={"happy": "pos", "sad": "neg", "angry": "neg"})
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    assert manifest.set_index("ID")["emotion"].to_dict() == {"a1": "pos", "a2": "neg", "b1": "pos", "c1": "neg",
                                                             "d1": "neg"}
    assert summary["speakers"] == 4
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    assert [(f.test_speakers, f.valid_speakers, sorted(f.test)) for f in folds] == [
        (["alice"], ["bob"], ["a1", "a2"]), (["bob"], ["carol"], ["b1"]), (["carol"], ["dave"], ["c1"]),
        (["dave"], ["alice"], ["d1"])]
    assert sorted(folds[0].train) == ["c1", "d1"]


def test_gender_column_interleaves_folds(corpus, tmp_path):
    text = corpus.read_text().splitlines()
    genders = ["F", "f", "female", "male", "M", "M"]  # alice, alice, bob, carol, carol, dave
    rows = [text[0] + ",gender"] + [f"{line},{g}" for line, g in zip(text[1:], genders)]
    corpus.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    prepare_csv.main(["--root", str(corpus), "--out", str(out)])
    manifest = read_manifest(str(out / "default" / "manifest.csv"))
    assert manifest.groupby("speaker")["gender"].first().to_dict() == {"alice": "F", "bob": "F", "carol": "M",
                                                                       "dave": "M"}
    folds = load_folds(str(out / "default" / "folds_lkso.json"))
    assert [f.test_speakers[0] for f in folds] == ["alice", "carol", "bob", "dave"]  # F, M interleaved


def test_missing_column_names_the_csv(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label\na.wav,happy\n")
    with pytest.raises(ManifestError, match=re.escape(str(csv)) + r".*\['speaker'\]"):
        prepare_csv.read_csv(str(csv))


def test_missing_audio_names_csv_line_and_file(corpus):
    corpus.write_text(corpus.read_text() + "audio/zz.wav,erin,happy,,\n")
    with pytest.raises(ManifestError, match=re.escape(f"{corpus}:8") + ".*zz.wav"):
        prepare_csv.read_csv(str(corpus))


def test_duplicate_file_stems_need_an_id_column(corpus, tmp_path):
    write(str(corpus.parent / "other" / "a1.wav"))
    corpus.write_text(corpus.read_text() + "other/a1.wav,erin,happy,,\n")
    with pytest.raises(ManifestError, match=re.escape(str(corpus)) + ".*'a1'"):
        prepare_csv.read_csv(str(corpus))


def test_speaker_with_two_genders(corpus):
    corpus.write_text("path,speaker,label,gender\naudio/a1.wav,alice,happy,F\naudio/a2.wav,alice,sad,M\n")
    with pytest.raises(ManifestError, match=re.escape(str(corpus)) + ".*'alice'.*both genders"):
        prepare_csv.read_csv(str(corpus))


def test_without_transcript_column_and_with_a_language_column(tmp_path):
    csv = write_csv_corpus(str(tmp_path), transcripts=False)
    frame = prepare_csv.read_csv(csv)
    assert (frame["transcript"] == "").all() and (frame["language"] == "").all()
    summary = prepare_csv.prepare_csv(csv, str(tmp_path / "out"))
    assert summary["language"] == ""  # unknown
    rows = open(csv).read().splitlines()
    with open(csv, "w") as f:
        f.write("\n".join([rows[0] + ",language"] + [r + ",fr" for r in rows[1:]]) + "\n")
    summary = prepare_csv.prepare_csv(csv, str(tmp_path / "out"))
    assert summary["language"] == "fr"
    assert (read_manifest(str(tmp_path / "out" / "default" / "manifest.csv"))["language"] == "fr").all()


def test_attribute_columns_reach_the_manifest_and_bad_values_name_the_line(tmp_path):
    for name in ("a", "b", "c", "d"):
        for i in range(2):
            write(tmp_path / f"{name}{i}.wav")
    csv = tmp_path / "attrs.csv"
    lines = ["path,speaker,label,arousal,valence"] + [
        f"{name}{i}.wav,{name},{'pos' if i else 'neg'},{1.5 + i},{-0.25 * i}" for name in "abcd" for i in range(2)]
    csv.write_text("\n".join(lines) + "\n")
    prepare_csv.prepare_csv(str(csv), str(tmp_path / "out"))
    manifest = read_manifest(str(tmp_path / "out" / "default" / "manifest.csv")).set_index("ID")
    assert manifest.loc["b1", ["arousal", "valence", "dominance"]].tolist() == [2.5, -0.25, ""]
    csv.write_text("\n".join(lines[:3] + ["c0.wav,c,neg,loud,0"]) + "\n")
    with pytest.raises(ManifestError, match=re.escape(f"{csv}:4: arousal 'loud' is not a number")):
        prepare_csv.read_csv(str(csv))
