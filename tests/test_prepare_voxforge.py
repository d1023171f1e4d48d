"""VoxForge reader on tiny extracted submissions (wav/ and flac/ audio, anonymous users, a folder without PROMPTS)."""

import logging
import os
import re

import numpy as np
import pytest
import soundfile as sf

import prepare_voxforge
from ser_modules.data.corpus import ASR_COLUMNS
from ser_modules.utils.fileio import ManifestError

# folder -> (PROMPTS lines, {utt: (subfolder, sample rate, channels, seconds)})
SUBMISSIONS = {
    "Aaron-20080318-kdl": (["a0001 HELLO WORLD", "a0002 it's a test.", "a0003 NO AUDIO HERE"],
                           {"a0001": ("wav", 48000, 2, 0.2), "a0002": ("wav", 16000, 1, 0.1)}),
    "Aaron-20080401-xyz": (["b0001 SAME SPEAKER AGAIN"], {"b0001": ("flac", 16000, 1, 0.15)}),
    "anonymous-20080504-qvg": (["rb-01 the quick brown fox"], {"rb-01": ("flac", 48000, 1, 0.1)}),
    "anonymous-20080601-abc": (["a0001 JUMPS OVER"], {"a0001": ("wav", 16000, 1, 0.1)}),
    "bob-20090101-q1w": (["a0001 GOOD BYE"], {"a0001": ("wav", 16000, 1, 0.3)}),
}


def write(path, sr, channels, seconds):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.full((int(round(seconds * sr)), channels), 0.1, dtype=np.float32), sr, subtype="PCM_16")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "voxforge"
    for folder, (prompts, audio) in SUBMISSIONS.items():
        os.makedirs(root / folder / "etc")
        (root / folder / "etc" / "PROMPTS").write_text("".join(f"{folder}/mfc/{p}\n" for p in prompts))
        for utt, (sub, sr, channels, seconds) in audio.items():
            write(str(root / folder / sub / f"{utt}.{sub}"), sr, channels, seconds)
    write(str(root / "Zed-20100101-aaa" / "wav" / "a0001.wav"), 16000, 1, 0.1)  # no etc/PROMPTS
    return root


def test_read_voxforge_all_train(root, caplog):
    caplog.set_level(logging.INFO)
    splits = prepare_voxforge.read_voxforge(str(root))
    assert list(splits) == ["train"]
    train = splits["train"]
    assert list(train.columns) == ASR_COLUMNS
    assert train[["ID", "speaker", "duration", "transcript"]].values.tolist() == [
        ["vf-Aaron-20080318-kdl-a0001", "vf-Aaron", 0.2, "HELLO WORLD"],
        ["vf-Aaron-20080318-kdl-a0002", "vf-Aaron", 0.1, "IT'S A TEST"],
        ["vf-Aaron-20080401-xyz-b0001", "vf-Aaron", 0.15, "SAME SPEAKER AGAIN"],
        ["vf-anonymous-20080504-qvg-rb-01", "vf-anonymous-20080504-qvg", 0.1, "THE QUICK BROWN FOX"],
        ["vf-anonymous-20080601-abc-a0001", "vf-anonymous-20080601-abc", 0.1, "JUMPS OVER"],
        ["vf-bob-20090101-q1w-a0001", "vf-bob", 0.3, "GOOD BYE"],
    ]
    assert train.loc[2, "wav"] == str(root / "Aaron-20080401-xyz" / "flac" / "b0001.flac")
    assert (train["corpus"] == "voxforge").all() and (train["seg_start"] == "").all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # folders are read in sorted order: Aaron-... before Zed-...
    assert "Aaron-20080318-kdl/etc/PROMPTS:3" in warnings[0] and "a0003" in warnings[0]
    assert "Zed-20100101-aaa" in warnings[1] and "no etc/PROMPTS" in warnings[1]
    logs = " ".join(r.getMessage() for r in caplog.records)
    assert "1 folders without PROMPTS" in logs and "1 prompts without audio" in logs


def test_heldout_speakers(root):
    # sorted speakers: vf-Aaron, vf-anonymous-...-qvg, vf-anonymous-...-abc, vf-bob; 0.5 -> 2 held out,
    # evenly spaced (positions 1 and 3), alternately dev and test
    splits = prepare_voxforge.read_voxforge(str(root), heldout_fraction=0.5)
    assert sorted(splits) == ["dev", "test", "train"]
    assert list(splits["dev"]["ID"]) == ["vf-anonymous-20080504-qvg-rb-01"]
    assert list(splits["test"]["ID"]) == ["vf-bob-20090101-q1w-a0001"]
    assert sorted(splits["train"]["speaker"].unique()) == ["vf-Aaron", "vf-anonymous-20080601-abc"]
    assert len(splits["train"]) == 4
    # one speaker held out: only dev, no empty test split
    splits = prepare_voxforge.read_voxforge(str(root), heldout_fraction=0.25)
    assert sorted(splits) == ["dev", "train"]
    assert list(splits["dev"]["speaker"]) == ["vf-anonymous-20080601-abc"]
    assert prepare_voxforge.read_voxforge(str(root), heldout_fraction=0.5)["dev"].equals(
        prepare_voxforge.read_voxforge(str(root), heldout_fraction=0.5)["dev"])


def test_bad_fraction_and_empty_root(root, tmp_path):
    with pytest.raises(ValueError, match="heldout_fraction"):
        prepare_voxforge.read_voxforge(str(root), heldout_fraction=1.0)
    empty = tmp_path / "empty"
    os.makedirs(empty / "Zed-20100101-aaa")
    with pytest.raises(ManifestError, match=re.escape(str(empty)) + ".*no VoxForge utterances"):
        prepare_voxforge.read_voxforge(str(empty))
