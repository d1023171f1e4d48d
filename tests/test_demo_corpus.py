"""The demo corpus generator: determinism, the real corpora's layouts, and that the preparers read it."""

import hashlib
import logging
import os

import numpy as np
import pytest
import soundfile as sf

import demo_lexicon
from make_demo_corpus import DemoConfig, Espeak, consensus_code, make_demo_corpus, resample_sinc
from prepare_iemocap import parse_emo_evaluation, prepare_iemocap
from prepare_librispeech import read_librispeech



def tree_digest(root):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name == "demo_corpus.json":
                continue
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture
def demo(tiny_demo):
    return tiny_demo


TINY = DemoConfig(seed=3, sessions=2, dialogs_per_session=2, turns_per_dialog=4, asr_train_minutes=0.25,
                  asr_eval_minutes=0.1)  # the configuration of conftest.tiny_demo


@pytest.mark.slow
def test_deterministic_for_a_seed(demo, tmp_path):
    assert demo["cfg"] == TINY
    again = make_demo_corpus(str(tmp_path / "again"), TINY, nj=1)  # other worker count, same bytes
    assert tree_digest(again["iemocap"]) == tree_digest(demo["iemocap"])
    assert tree_digest(again["librispeech"]) == tree_digest(demo["librispeech"])
    other = make_demo_corpus(str(tmp_path / "other"), DemoConfig(**{**TINY.__dict__, "seed": 4}), nj=2)
    assert tree_digest(other["iemocap"]) != tree_digest(demo["iemocap"])


def test_rerun_reuses_the_corpus(demo, caplog):
    caplog.set_level(logging.INFO)
    root = os.path.dirname(demo["iemocap"])
    stamp = os.path.join(root, "demo_corpus.json")
    before = os.path.getmtime(stamp)
    info = make_demo_corpus(root, TINY)
    assert os.path.getmtime(stamp) == before and "reusing" in caplog.text
    assert info["emotion_turns"] == 2 * 2 * 4
    # The recipes ask for no size (cfg None): a small demo corpus made beforehand is theirs to use.
    assert make_demo_corpus(root)["emotion_turns"] == 2 * 2 * 4 and os.path.getmtime(stamp) == before


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="holds no demo_corpus.json"):
        make_demo_corpus(str(tmp_path), TINY)


def test_iemocap_layout(demo):
    root = demo["iemocap"]
    assert sorted(os.listdir(root)) == ["Session1", "Session2"]
    emo_dir = os.path.join(root, "Session1", "dialog", "EmoEvaluation")
    assert {"Categorical", "Attribute"} <= set(os.listdir(emo_dir))
    files = sorted(f for f in os.listdir(emo_dir) if f.endswith(".txt"))
    assert files == ["Ses01F_impro01.txt", "Ses01M_script01_1.txt"]  # improvised and scripted
    with open(os.path.join(emo_dir, files[0])) as f:
        assert f.readline().strip() == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
    turns = parse_emo_evaluation(os.path.join(emo_dir, files[0]))
    assert len(turns) == 4
    for t in turns:
        assert len(t["votes"]) == 3 and t["end"] > t["start"]
        assert t["label"] == consensus_code(t["votes"])
        wav = os.path.join(root, "Session1", "sentences", "wav", "Ses01F_impro01", t["ID"] + ".wav")
        info = sf.info(wav)
        assert info.samplerate == 16000 and info.channels == 1
        assert info.duration == pytest.approx(t["end"] - t["start"], abs=1e-3)
    assert {t["ID"][-4] for t in turns} == {"F", "M"}
    trans = os.path.join(root, "Session1", "dialog", "transcriptions", files[0])
    with open(trans) as f:
        text = f.read()
    assert "_MXX0 [" in text and "Ses01F_impro01_F000 [" in text


def test_librispeech_layout_and_held_out_voices(demo):
    root = demo["librispeech"]
    assert {"train-clean-100", "dev-clean", "test-clean", "SPEAKERS.TXT"} <= set(os.listdir(root))
    splits = read_librispeech(root)
    speakers = {s: set(f["speaker"]) for s, f in splits.items()}
    assert len(speakers["train"]) == 10 and len(speakers["dev"]) == 2 and len(speakers["test"]) == 2
    assert not (speakers["train"] & (speakers["dev"] | speakers["test"]))
    utt = splits["train"].iloc[0]
    spk, chapter, _ = os.path.basename(utt["wav"])[:-5].split("-")
    assert utt["wav"].endswith(f"{spk}/{chapter}/{spk}-{chapter}-0000.flac")
    assert utt["transcript"] == utt["transcript"].upper() and set(utt["transcript"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    assert splits["train"]["duration"].sum() >= 0.25 * 60


def test_preparer_reads_the_demo(demo, tmp_path):
    summary = prepare_iemocap(demo["iemocap"], str(tmp_path / "data"))
    assert summary["turns"] == 16
    assert summary["protocols"]["standard"]["utterances"] == demo["target_class_turns"]


def test_words_do_not_depend_on_emotion(monkeypatch):
    """Generators that differ only in the emotion they render (every turn angry, every turn sad, ...)
    plan the same words, transcripts and spoken texts, turn by turn; the rendering (prosody) differs."""
    import make_demo_corpus

    cfg = DemoConfig(seed=5, sessions=2, dialogs_per_session=3, turns_per_dialog=6)
    plans = {}
    for emotion in make_demo_corpus.EMOTION_MIXTURE:
        monkeypatch.setattr(make_demo_corpus, "EMOTION_MIXTURE", {emotion: 1.0})
        dialogs, tasks = make_demo_corpus.plan_emotion_corpus(cfg, "/nowhere", np.random.default_rng(cfg.seed))
        turns = [t for d in dialogs for t in d["turns"]]
        assert {t.emotion for t in turns} == {emotion}
        jobs = [j for js in tasks for j in js]
        plans[emotion] = ([t.text for t in turns], [t.transcript for t in turns], [j.text for j in jobs],
                          [(j.rate, j.pitch, j.volume) for j in jobs])
    words = {e: p[:3] for e, p in plans.items()}
    assert len({repr(w) for w in words.values()}) == 1 and len(set(words["ang"][0])) > 10
    assert plans["ang"][3] != plans["sad"][3]  # the emotion is in the prosody only
    assert len(demo_lexicon.vocabulary()) >= 500


def test_espeak_voices_exist_and_differ():
    engine = Espeak()
    a = engine.synth("the house is quiet", "en-us+f1", 170, 50, 50, 100, seed=1)
    b = engine.synth("the house is quiet", "en-us+m1", 170, 50, 50, 100, seed=1)
    assert a.dtype == np.int16 and len(a) > engine.sample_rate * 0.5
    assert len(a) != len(b) or not np.array_equal(a, b)
    with pytest.raises(ValueError, match="no voice"):
        engine.synth("x", "zz-nonexistent", 170, 50, 50, 100, seed=1)


def plan_digest(cfg, ratings: bool = True) -> str:
    """SHA-1 of everything a config plans (synthesis jobs, turns, then the metadata writer's next draws);
    without the evaluators' dimensional ``ratings`` when False."""
    import dataclasses

    from make_demo_corpus import plan_emotion_corpus, plan_librispeech

    rng = np.random.default_rng(cfg.seed)
    dialogs, tasks = plan_emotion_corpus(cfg, "/root", rng)
    _, asr = plan_librispeech(cfg, "/asr", rng)
    text = repr([[dataclasses.astuple(j) for j in t] for t in tasks + asr])
    turns = [t if ratings else dataclasses.replace(t, vad=[]) for d in dialogs for t in d["turns"]]
    text += repr([dataclasses.astuple(t) for t in turns]) + repr(rng.integers(2**31, size=4).tolist())
    return hashlib.sha1(text.encode()).hexdigest()


def test_default_style_plans_the_corpus_it_planned_before_styles():
    # Without the dimensional ratings: the digest of the generator at commit 31e8dd8, before the second
    # (other-style) demo corpus existed, and of generator 8 (75f1b40): the same audio, votes and draws.
    assert plan_digest(DemoConfig(), ratings=False) == "b302bb3ed800df28378d6b6bb9c830b3a63637b7"
    # generator 9's ratings follow each rendering's prosody (generator 8: b42d5862767642138be9b04025aa659022bfc9a1)
    assert plan_digest(DemoConfig()) == "43e76634d78fad558a58bc701f431862625765f6"
    assert DemoConfig().key() == {"generator_version": 9, "seed": 0, "sessions": 5, "dialogs_per_session": 6,
                                  "turns_per_dialog": 28, "asr_train_minutes": 60.0, "asr_eval_minutes": 6.0}


def test_the_other_style_has_new_voices_and_never_replaces_the_first_corpus(tmp_path):
    from make_demo_corpus import ASR_DEV_VOICES, ASR_TEST_VOICES, ASR_TRAIN_VOICES, EMOTION_VOICES, OTHER_EMOTION_VOICES

    engine = Espeak()
    others = [v for pair in OTHER_EMOTION_VOICES for v in pair]
    for voice in others:  # each one exists (an unknown voice raises)
        assert len(engine.synth("the house is quiet", voice, 170, 50, 50, 100, seed=1)) > 0
    used = {v for pair in EMOTION_VOICES for v in pair} | {v for v, _ in ASR_TRAIN_VOICES + ASR_DEV_VOICES + ASR_TEST_VOICES}
    assert not set(others) & used and len(set(others)) == len(others)
    cfg = DemoConfig(seed=2, sessions=1, dialogs_per_session=2, turns_per_dialog=3, asr_train_minutes=0,
                     asr_eval_minutes=0, style="other")
    info = make_demo_corpus(str(tmp_path / "other"), cfg, nj=1)
    assert info["emotion_turns"] == 6 and not os.path.exists(tmp_path / "other" / "LibriSpeech")
    assert make_demo_corpus(str(tmp_path / "other"), None, style="other")["config"] == cfg.key()  # any size reused
    with pytest.raises(FileExistsError, match="holds the demo corpus of style 'other', not 'default'"):
        make_demo_corpus(str(tmp_path / "other"))


def test_resampler_keeps_a_tone_and_removes_aliases():
    t = np.arange(22050) / 22050
    y = resample_sinc(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    ref = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / 16000)
    assert len(y) == 16000
    assert np.abs(y[100:-100] - ref[100:-100]).max() < 1e-3
    above_nyquist = resample_sinc(np.sin(2 * np.pi * 9500 * t), 22050, 16000)
    assert np.abs(above_nyquist[100:-100]).max() < 0.02


def test_raters_hear_arousal_and_dominance_in_the_renderings_prosody():
    from make_demo_corpus import EMOTION_PROSODY, VAD_PROTOTYPE, _perceived_vad, _ratings

    base = (165.0, 50.0, 50.0, 100.0, 0.0)
    # one jitter standard deviation up in rate, range, volume and effort (pitch does not count)
    rendered = (165 + 12, 50 + 5, 50 + 10, 100 + 15, 0.25)
    v, a, d = _perceived_vad("neu", rendered, base, EMOTION_PROSODY)
    assert (v, a, d) == pytest.approx((3.0, 2.5 + 0.3 * 4, 2.8 + 0.3 * 2))
    # the emotion's own setting for the speaker is heard as its prototype
    angry = tuple(b + o for b, o in zip(base, EMOTION_PROSODY["ang"]))
    assert _perceived_vad("ang", angry, base, EMOTION_PROSODY) == pytest.approx(VAD_PROTOTYPE["ang"])
    # each rater adds noise and answers on the 1-5 scale
    assert _ratings([("E1", 0.4, -0.2, 3.0), ("E2", 0.0, 0.0, -9.0)], (3.0, 3.7, 3.4)) == [("E1", 3, 4, 5), ("E2", 3, 4, 1)]
