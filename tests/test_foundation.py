"""Audio reading, transcripts, atomic writes, folds and hparams layering."""

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ser_modules.data.audio import AudioReadError, load_audio
from ser_modules.data.corpus import apply_label_map, drop_long_utterances, parse_label_map, resolve_label_map
from ser_modules.utils.fileio import ManifestError, atomic_path, read_manifest, save_torch, write_csv
from ser_modules.data.folds import (
    check_speaker_independence, leave_k_speakers_out, leave_one_session_out, speaker_groups,
)
from ser_modules.data.text import CharVocabulary, normalize_transcript, remove_special_tokens
from ser_modules.utils.hparams import HparamsError, check_overrides, load_stage_hparams


def test_load_audio_resamples_48k_stereo(tmp_path):
    t = np.arange(48000) / 48000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 48000, subtype="PCM_16")
    wav = load_audio(str(tmp_path / "s.wav"))
    assert wav.shape == (16000,) and wav.dtype == torch.float32
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(wav.numpy()[200:-200] - ref[200:-200]).max() < 2e-3
    seg = load_audio(str(tmp_path / "s.wav"), start=0.25, end=0.5)
    assert seg.shape == (4000,)


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioReadError, match="missing.wav: no such audio file"):
        load_audio(str(tmp_path / "missing.wav"))
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(AudioReadError, match="text.wav: not a readable audio file"):
        load_audio(str(tmp_path / "text.wav"))
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(AudioReadError, match="empty.wav: the file holds no audio"):
        load_audio(str(tmp_path / "empty.wav"))


def test_transcript_normalisation():
    assert remove_special_tokens("[LAUGHTER] Oh,  really? [BREATHING]") == "Oh, really?"
    assert normalize_transcript("Well--I don't know. [GARBAGE] {NOISE} <unk> 'quoted'") == "WELL I DON'T KNOW QUOTED"
    # Letters outside A-Z are transliterated (German umlauts written out), never dropped.
    assert normalize_transcript("Was sind denn das für Tüten, die da unter dem Tisch stehen?") == \
        "WAS SIND DENN DAS FUER TUETEN DIE DA UNTER DEM TISCH STEHEN"
    assert normalize_transcript("Heute abend könnte ich es ihm sagen. Straße, GROẞ") == \
        "HEUTE ABEND KOENNTE ICH ES IHM SAGEN STRASSE GROSS"
    assert normalize_transcript("A\u0308pfel im Café, don\u2019t") == "AEPFEL IM CAFE DON'T"  # decomposed umlaut
    vocab = CharVocabulary()
    assert len(vocab) == 29 and vocab.symbols[0] == "<blank>" and vocab.symbols[-1] == " "
    ids = vocab.encode("IT'S A")
    assert vocab.decode([0] + ids + [0]) == "IT'S A"
    with pytest.raises(ValueError, match="character '1'"):
        vocab.encode("A1")


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_saved_models_are_the_same_bytes_for_the_same_tensors(tmp_path):
    """torch.save to a path names the archive's folder after the (random) temporary file; save_torch does
    not, so a rerun's model file, its digest and every store key built from it are the same."""
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    first, second = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    save_torch(state, str(first))
    save_torch({k: v.clone() for k, v in state.items()}, str(second))
    assert first.read_bytes() == second.read_bytes()
    assert all(torch.equal(torch.load(first)[k], v) for k, v in state.items())
    assert os.listdir(tmp_path / "a") == ["model.pt"]  # the temporary file was renamed
    with atomic_path(str(tmp_path / "c.pt")) as tmp:
        torch.save(state, tmp)  # the plain path form: a random inner name
    assert (tmp_path / "c.pt").read_bytes() != first.read_bytes()


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="nope.csv: manifest not found"):
        read_manifest(str(tmp_path / "nope.csv"))
    write_csv(str(tmp_path / "m.csv"), pd.DataFrame({"ID": ["a", "a"], "wav": ["x", "y"]}))
    with pytest.raises(ManifestError, match="duplicate utterance ID 'a'"):
        read_manifest(str(tmp_path / "m.csv"))
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['speaker'\]"):
        read_manifest(str(tmp_path / "m.csv"), required=("speaker",))


def _manifest(speakers, per=3):
    rows = []
    for s in speakers:
        for i in range(per):
            rows.append({"ID": f"{s}_{i}", "speaker": s, "emotion": ["neu", "ang", "sad"][i % 3],
                         "session": s[:2]})
    return pd.DataFrame(rows)


def test_leave_k_speakers_out():
    m = _manifest(["a1", "a2", "b1", "b2", "c1", "c2", "d1"])
    folds = leave_k_speakers_out(m, k=2)
    # 7 speakers in groups of 2: the lone last speaker joins the previous group.
    assert [f.test_speakers for f in folds] == [["a1", "a2"], ["b1", "b2"], ["c1", "c2", "d1"]]
    assert [f.valid_speakers for f in folds] == [["b1", "b2"], ["c1", "c2", "d1"], ["a1", "a2"]]
    check_speaker_independence(m, folds)
    assert sorted(folds[0].train) == ["c1_0", "c1_1", "c1_2", "c2_0", "c2_1", "c2_2", "d1_0", "d1_1", "d1_2"]
    groups = speaker_groups(["f1", "f2", "m1", "m2"], 2, {"f1": "F", "f2": "F", "m1": "M", "m2": "M"})
    assert groups == [["f1", "m1"], ["f2", "m2"]]  # genders mixed in every group
    with pytest.raises(ManifestError, match="at least 3 speaker groups"):
        leave_k_speakers_out(_manifest(["a", "b", "c", "d"]), k=2)


def test_leave_one_session_out_valid_is_stratified():
    m = _manifest(["s1a", "s1b", "s2a", "s2b", "s3a"], per=10)
    folds = leave_one_session_out(m, valid_fraction=0.2, seed=0)
    assert [f.name for f in folds] == ["sessions1", "sessions2", "sessions3"]
    f = folds[0]
    valid = m.set_index("ID").loc[f.valid]
    assert valid["emotion"].value_counts().to_dict() == {"neu": 2, "ang": 2, "sad": 2}  # 20% of 12/9/9, rounded
    assert set(valid["speaker"]) <= {"s2a", "s2b", "s3a"}
    check_speaker_independence(m, folds)


def test_check_speaker_independence_catches_leaks():
    m = _manifest(["a", "b", "c"])
    folds = leave_k_speakers_out(m, k=1)
    folds[0].train.append(folds[0].test[0])
    with pytest.raises(ManifestError, match="in two splits"):
        check_speaker_independence(m, folds)
    folds = leave_k_speakers_out(m, k=1)
    folds[0].train.append("a_9")
    m2 = pd.concat([m, pd.DataFrame([{"ID": "a_9", "speaker": "a"}])])
    with pytest.raises(ManifestError, match=r"test speaker\(s\) \['a'\]"):
        check_speaker_independence(m2, folds)


def test_label_maps():
    assert parse_label_map("calm:neu, happy:hap") == {"calm": "neu", "happy": "hap"}
    assert resolve_label_map("iemocap4")["calm"] == "neu"
    with pytest.raises(ManifestError, match="label:class"):
        parse_label_map("calm")
    frame = pd.DataFrame({"ID": ["1", "2", "3"], "label": ["calm", "fearful", "happy"]})
    mapped = apply_label_map(frame, resolve_label_map("iemocap4"))
    assert mapped["emotion"].tolist() == ["neu", "hap"]


def test_drop_long_utterances(caplog):
    import logging

    caplog.set_level(logging.INFO)
    frame = pd.DataFrame({"ID": list("abc"), "duration": [3.0, 15.0, 15.5]})
    kept = drop_long_utterances(frame, 15.0, "x")
    assert kept["ID"].tolist() == ["a", "b"] and "dropped 1 of 3" in caplog.text


def test_hparams_layers_and_overrides(tmp_path):
    conf = tmp_path / "conf"
    (conf / "demo").mkdir(parents=True)
    (conf / "ser.yaml").write_text("seed: 1\nhidden: 128\nlr: 0.0001\nsizes: [!ref <hidden>, 4]\n")
    (conf / "asr.yaml").write_text("seed: 1\nn_epochs: 35\n")
    (conf / "demo" / "ser.yaml").write_text("hidden: 16\n")
    hp, text = load_stage_hparams(str(conf), "ser", "demo", runner={"seed": 5, "other": 1}, items=["ser.lr=0.01"])
    assert hp["sizes"] == [16, 4] and hp["seed"] == 5 and hp["lr"] == 0.01
    assert "hidden: 16" in text
    hp, _ = load_stage_hparams(str(conf), "ser", "paper", items=["seed=9", "n_epochs=3"])
    assert hp["hidden"] == 128 and hp["seed"] == 9
    check_overrides(str(conf), ["n_epochs=3", "ser.hidden=3"])
    with pytest.raises(HparamsError, match="no stage file .* has this key"):
        check_overrides(str(conf), ["hiden=3"])
    with pytest.raises(HparamsError, match="ser.yaml has no key 'n_epochs'"):
        check_overrides(str(conf), ["ser.n_epochs=3"])
    (conf / "demo" / "ser.yaml").write_text("hiddenn: 16\n")
    with pytest.raises(HparamsError, match=r"keys \['hiddenn'\] are not in"):
        load_stage_hparams(str(conf), "ser", "demo")
