"""MSP-Podcast preparer on a tiny release in its layout (Audios/, Labels/labels_consensus.csv): the official
splits as a fold scheme beside speaker folds, the challenge's classes, the attribute ratings, Unknown speakers,
the withheld test set, and a listed file that is missing."""

import json

import pandas as pd
import pytest

import prepare_msp_podcast
from ser_modules.data.folds import load_folds
from ser_modules.utils.fileio import ManifestError, read_manifest

from corpus_fixtures import write_wav

HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
CLASSES = "ASHUFDCNOX"


def rows():
    """20 labelled turns: speakers 1-4 train, 5 development, 6 Test1, 7 Test2 (+ two Unknown), one Test3 turn."""
    split_of = {1: "Train", 2: "Train", 3: "Train", 4: "Train", 5: "Development", 6: "Test1", 7: "Test2"}
    out = []
    for i in range(20):
        speaker = i % 7 + 1
        out.append((f"MSP-PODCAST_{i:04d}_0001.wav", CLASSES[i % len(CLASSES)], 1 + (i % 7) * 0.9, 7 - (i % 5) * 1.1,
                    2.5 + (i % 3) * 0.5, str(speaker), "Female" if speaker % 2 else "Male", split_of[speaker]))
    out.append(("MSP-PODCAST_0100_0001.wav", "A", 6.0, 2.0, 5.5, "Unknown", "Unknown", "Train"))
    out.append(("MSP-PODCAST_0101_0001.wav", "N", 3.0, 4.0, 4.0, "Unknown", "Unknown", "Train"))
    out.append(("MSP-PODCAST_0200_0001.wav", "X", 0.0, 0.0, 0.0, "9", "Male", "Test3"))  # labels withheld
    return out


def write_release(root, records, missing=()):
    for r in records:
        if r[0] not in missing:
            write_wav(root / "Audios" / r[0], seconds=0.2)
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    (root / "Labels" / "labels_consensus.csv").write_text(
        HEADER + "".join(",".join(str(x) for x in r) + "\n" for r in records))


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "MSP-PODCAST"
    write_release(root, rows())
    return root


def test_labels_give_classes_attributes_splits_and_speakers(release):
    frame = prepare_msp_podcast.read_labels(str(release)).set_index("ID")
    assert len(frame) == 22  # the Test3 turn is left out
    row = frame.loc["MSP-PODCAST_0003_0001"]  # i = 3: class U, speaker 4, Train
    assert (row["label"], row["split"], row["speaker"], row["gender"]) == ("U", "train", "msp4", "M")
    assert (row["arousal"], row["valence"], row["dominance"]) == pytest.approx((1 + 3 * 0.9, 7 - 3 * 1.1, 2.5))
    assert row["duration"] == pytest.approx(0.2)
    # each Unknown speaker is a speaker of its own
    assert frame.loc["MSP-PODCAST_0100_0001", "speaker"] == "mspUnknown_MSP-PODCAST_0100_0001"
    assert frame.loc["MSP-PODCAST_0101_0001", "speaker"] == "mspUnknown_MSP-PODCAST_0101_0001"


def test_protocols_and_the_official_fold_scheme(release, tmp_path):
    out = tmp_path / "emotion"
    summary = prepare_msp_podcast.prepare_msp_podcast(str(release), str(out), k=2)
    assert sorted(summary["protocols"]) == ["attributes", "full", "iemocap4"]
    full = read_manifest(str(out / "full" / "manifest.csv"))
    assert sorted(full["emotion"].unique()) == ["ang", "con", "dis", "fea", "hap", "neu", "sad", "sur"]  # O, X left out
    assert sorted(read_manifest(str(out / "iemocap4" / "manifest.csv"))["emotion"].unique()) == ["ang", "hap", "neu", "sad"]
    attributes = read_manifest(str(out / "attributes" / "manifest.csv"))
    assert len(attributes) == 22 and {"O", "X"} <= set(attributes["emotion"])
    # the manifest keeps the release's ratings, the columns dimensional variants read
    labels = pd.read_csv(release / "Labels" / "labels_consensus.csv").set_index("FileName")
    for _, r in attributes.iterrows():
        source = labels.loc[r["ID"] + ".wav"]
        assert (float(r["arousal"]), float(r["valence"]), float(r["dominance"])) == pytest.approx(
            (source["EmoAct"], source["EmoVal"], source["EmoDom"]))
    official = load_folds(str(out / "attributes" / "folds_official.json"))
    split = dict(zip(attributes["ID"], attributes["session"]))
    assert [f.name for f in official] == ["test1", "test2"]
    for fold in official:
        assert {split[i] for i in fold.train} == {"train"} and {split[i] for i in fold.valid} == {"valid"}
        assert {split[i] for i in fold.test} == {fold.name}
        assert fold.train == official[0].train and fold.valid == official[0].valid
    speaker_folds = load_folds(str(out / "attributes" / "folds_lkso.json"))
    assert len(speaker_folds) >= 3
    assert json.loads((out / "summary.json").read_text())["protocols"]["full"]["fold_schemes"] == ["lkso", "official"]


def test_a_listed_file_that_is_missing_is_refused_naming_its_line(tmp_path):
    root = tmp_path / "MSP-PODCAST"
    records = rows()
    write_release(root, records, missing=(records[5][0],))
    with pytest.raises(ManifestError, match=r"labels_consensus.csv:7: .*MSP-PODCAST_0005_0001.wav: audio file not found"):
        prepare_msp_podcast.read_labels(str(root))


@pytest.mark.parametrize("column, value, message", [
    (2, "high", "EmoAct 'high' is not a number"),
    (1, "Z", "EmoClass 'Z' is not one of"),
    (7, "Dev", "Split_Set 'Dev' is not one of"),
])
def test_bad_label_rows_are_refused_naming_the_line(tmp_path, column, value, message):
    root = tmp_path / "MSP-PODCAST"
    records = [list(r) for r in rows()]
    records[2][column] = value
    write_release(root, records)
    with pytest.raises(ManifestError, match=rf"labels_consensus.csv:4: {message}"):
        prepare_msp_podcast.read_labels(str(root))


def test_not_a_release_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="not found .*MSP-Podcast release"):
        prepare_msp_podcast.read_labels(str(tmp_path))
