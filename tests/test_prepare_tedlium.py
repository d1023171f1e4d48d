"""TED-LIUM release 2 reader on a tiny release in the real layout (stm/ + sph/ per split)."""

import logging
import os
import re

import numpy as np
import pytest
import soundfile as sf

import prepare_tedlium
from ser_modules.data.audio import load_audio
from ser_modules.data.corpus import ASR_COLUMNS
from ser_modules.utils.fileio import ManifestError

STM = {
    ("train", "TalkA"): ";; comment line\n"
                        "TalkA 1 TalkA 0.00 0.10 <o,f0,male> i don 't know {NOISE} it 's like(2) <unk> 's\n"
                        "TalkA 1 TalkA 0.10 0.15 <o,f0,male> ignore_time_segment_in_scoring\n"
                        "TalkA 1 TalkA 0.15 0.22 <o,f0,male> {BREATH} <unk>\n"
                        "TalkA 1 TalkA 0.22 0.35 <o,f0,male> we 're here 'cause you 've asked (TalkA-3)\n",
    ("train", "TalkB"): "TalkB 1 TalkB_Speaker 0.05 0.25 <o,f0,female> the talk(2) was great\n",
    ("dev", "TalkC"): "TalkC 1 TalkC 0.00 0.20 <F0_M> hello world\n",
    ("test", "TalkD"): "TalkD 1 TalkD 0.10 0.20 <o,f0,male> it 's fine\n",
}


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "TEDLIUM_release2"
    for (split, talk), text in STM.items():
        os.makedirs(root / split / "stm", exist_ok=True)
        os.makedirs(root / split / "sph", exist_ok=True)
        (root / split / "stm" / f"{talk}.stm").write_text(text)
        data = np.linspace(-0.5, 0.5, 4800, dtype=np.float32)  # 0.3 s at 16 kHz
        sf.write(str(root / split / "sph" / f"{talk}.sph"), data, 16000, format="NIST", subtype="PCM_16")
    return root


def test_clean_transcript():
    clean = prepare_tedlium.clean_transcript
    assert clean("i don 't know {NOISE} it 's like(2) <unk> 's") == "I DON'T KNOW IT'S LIKE"
    assert clean("we 're here 'cause you 've asked (TalkA-3)") == "WE'RE HERE CAUSE YOU'VE ASKED"
    assert clean("{BREATH} <unk> <sil>") == ""
    assert clean("'s at the start") == "S AT THE START"


def test_read_tedlium(release, caplog):
    caplog.set_level(logging.INFO)
    splits = prepare_tedlium.read_tedlium(str(release))
    assert sorted(splits) == ["dev", "test", "train"]
    train = splits["train"]
    assert list(train.columns) == ASR_COLUMNS
    assert train.to_dict("records") == [
        {"ID": "ted-TalkA-0000000", "wav": str(release / "train" / "sph" / "TalkA.sph"), "seg_start": 0.0,
         "seg_end": 0.1, "duration": 0.1, "speaker": "ted-TalkA", "corpus": "tedlium",
         "transcript": "I DON'T KNOW IT'S LIKE"},
        # 0.22-0.35 overruns the 0.3 s recording: clipped
        {"ID": "ted-TalkA-0000022", "wav": str(release / "train" / "sph" / "TalkA.sph"), "seg_start": 0.22,
         "seg_end": 0.3, "duration": 0.08, "speaker": "ted-TalkA", "corpus": "tedlium",
         "transcript": "WE'RE HERE CAUSE YOU'VE ASKED"},
        {"ID": "ted-TalkB-0000005", "wav": str(release / "train" / "sph" / "TalkB.sph"), "seg_start": 0.05,
         "seg_end": 0.25, "duration": 0.2, "speaker": "ted-TalkB_Speaker", "corpus": "tedlium",
         "transcript": "THE TALK WAS GREAT"},
    ]
    assert splits["dev"][["ID", "speaker", "transcript", "duration"]].to_dict("records") == [
        {"ID": "ted-TalkC-0000000", "speaker": "ted-TalkC", "transcript": "HELLO WORLD", "duration": 0.2}]
    assert splits["test"][["ID", "transcript", "seg_start", "seg_end"]].to_dict("records") == [
        {"ID": "ted-TalkD-0000010", "transcript": "IT'S FINE", "seg_start": 0.1, "seg_end": 0.2}]
    logs = " ".join(r.getMessage() for r in caplog.records)
    assert "tedlium train: 3 segments of 2 talks" in logs
    assert "1 empty transcript" in logs and "1 ignore_time_segment_in_scoring" in logs


def test_segment_loads_from_sph(release):
    row = prepare_tedlium.read_tedlium(str(release))["train"].iloc[1]
    audio = load_audio(row["wav"], row["seg_start"], row["seg_end"])
    assert audio.shape == (1280,)  # 0.22-0.30 s at 16 kHz
    assert float(audio[0]) == pytest.approx(-0.5 + 3520 / 4799, abs=1e-3)


def test_through_prepare_asr(release, tmp_path):
    from prepare_asr import prepare_asr

    summary = prepare_asr([("tedlium", str(release))], str(tmp_path / "asr"))
    assert (summary["train"]["utterances"], summary["dev"]["utterances"], summary["test"]["utterances"]) == (3, 1, 1)
    assert os.path.isfile(tmp_path / "asr" / "tedlium_train.csv")


def test_missing_sph_names_the_file(release):
    os.remove(release / "test" / "sph" / "TalkD.sph")
    with pytest.raises(ManifestError, match=re.escape(str(release / "test" / "sph" / "TalkD.sph"))):
        prepare_tedlium.read_tedlium(str(release))


def test_bad_time_names_the_stm_line(release):
    (release / "dev" / "stm" / "TalkC.stm").write_text("TalkC 1 TalkC 0.00 zero <o,f0,male> hi\n")
    with pytest.raises(ManifestError, match=re.escape("TalkC.stm:1") + ".*'zero'"):
        prepare_tedlium.read_tedlium(str(release))


def test_missing_split_folder(release):
    os.rename(release / "dev", release / "development")
    with pytest.raises(ManifestError, match=re.escape(os.path.join("dev", "stm"))):
        prepare_tedlium.read_tedlium(str(release))
