"""One rule for bad audio in every emotion corpus kind: stage 1 lists an unreadable, a NaN and a silent file
in ``data/emotion/rejected.csv`` with its reason, leaves them out of every protocol, and goes on."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from corpus_fixtures import write_cremad, write_csv_corpus, write_emodb, write_iemocap, write_ravdess
from recipe_runs import REPO


def write_bad(unreadable: str, nan: str, silent: str, sr: int = 16000) -> None:
    for path in (unreadable, nan, silent):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(unreadable, "wb") as f:
        f.write(b"\x00garbage" * 100)
    tone = (0.1 * np.sin(np.arange(sr // 2) / 7.0)).astype(np.float32)
    tone[10:20] = np.nan
    sf.write(nan, tone, sr, subtype="FLOAT")  # only float WAV holds NaN
    sf.write(silent, np.zeros(sr // 2, np.float32), sr, subtype="PCM_16")


def ravdess(tmp):
    root = write_ravdess(str(tmp / "RAVDESS"))
    names = ["Actor_01/03-01-03-01-01-02-01", "Actor_02/03-01-04-01-01-02-02", "Actor_03/03-01-01-01-02-02-03"]
    write_bad(*(os.path.join(root, f"{n}.wav") for n in names), sr=48000)
    return root, ["ravdess-" + n.split("/")[1] for n in names]


def cremad(tmp):
    root = write_cremad(str(tmp / "CREMA-D"))
    names = ["1001_IEO_SAD_HI", "1002_DFA_HAP_XX", "1003_TIE_ANG_LO"]
    write_bad(*(os.path.join(root, "AudioWAV", f"{n}.wav") for n in names))
    return root, [f"cremad-{n}" for n in names]


def emodb(tmp):
    root = write_emodb(str(tmp / "EmoDB"))
    names = ["03a04Wa", "08a01Na", "09a05Ta"]
    write_bad(*(os.path.join(root, "wav", f"{n}.wav") for n in names))
    return root, [f"emodb-{n}" for n in names]


def csv_list(tmp):
    path = write_csv_corpus(str(tmp))
    audio = os.path.join(os.path.dirname(path), "audio")
    names = ["x1", "x2", "x3"]
    write_bad(*(os.path.join(audio, f"{n}.wav") for n in names))
    with open(path, "a") as f:
        f.writelines(f"audio/{n}.wav,{spk},happy,,\n" for n, spk in zip(names, ("alice", "bob", "carol")))
    return path, names


def iemocap(tmp):
    root = write_iemocap(str(tmp / "IEMOCAP"))
    ids = ["Ses01F_impro01_F000", "Ses01F_impro01_F003", "Ses02F_impro01_F001"]
    write_bad(*(os.path.join(root, f"Session{i[4]}", "sentences", "wav", i[:-5], f"{i}.wav") for i in ids))
    return root, ids


KINDS = {"ravdess": ravdess, "crema-d": cremad, "emodb": emodb, "csv": csv_list, "iemocap": iemocap}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unreadable_nan_and_silent_files_are_listed_and_left_out(kind, tmp_path):
    root, bad = KINDS[kind](tmp_path)
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "local", "prepare_data.py"), "--emotion-corpus", kind,
                           "--emotion-root", root, "--out", str(out), "--skip-asr", "--nj", "1",
                           "--no-strict-counts"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rejected = pd.read_csv(out / "emotion" / "rejected.csv", keep_default_na=False)
    assert sorted(rejected["ID"]) == sorted(bad)
    reason = dict(zip(rejected["ID"], rejected["reason"]))
    assert "not a readable audio file" in reason[bad[0]]
    assert "samples are not finite" in reason[bad[1]]
    assert "every sample is zero" in reason[bad[2]]
    protocols = [d for d in os.listdir(out / "emotion") if (out / "emotion" / d / "manifest.csv").is_file()]
    assert protocols
    for protocol in protocols:
        manifest = pd.read_csv(out / "emotion" / protocol / "manifest.csv", keep_default_na=False)
        assert len(manifest) and not set(manifest["ID"]) & set(bad)
    assert "3 of" in proc.stderr and "utterances rejected" in proc.stderr
