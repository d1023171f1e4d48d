#!/usr/bin/env python3
"""Synthesise the built-in demo corpora with espeak-ng, in the real corpora's on-disk layouts.

Two corpora are written under ``--out``:

* ``IEMOCAP_full_release/``: 5 sessions x 2 actors (a female and a male voice each), improvised
  and scripted dialogs of alternating turns, ``EmoEvaluation/*.txt`` with the real header and
  3 evaluator votes per turn, ``transcriptions/*.txt`` and ``sentences/wav/<dialog>/<utt>.wav``.
  Emotions are rendered only through prosody (rate, pitch, pitch range, loudness, vocal effort)
  with per-utterance jitter, so classes overlap; the words never depend on the emotion.
* ``LibriSpeech/``: ``train-clean-100``, ``dev-clean`` and ``test-clean`` with
  ``<spk>/<chapter>/<spk>-<chapter>-<n>.flac`` and ``.trans.txt``, read by voices that are not
  in the emotion corpus; dev and test voices are held out from training.

With ``style="other"`` (:data:`OTHER_DEMO_CONFIG`, ``--style other``) the generator writes the second demo
corpus of cross-corpus evaluation instead: an IEMOCAP layout only, of 2 sessions, read by other voices
(:data:`OTHER_EMOTION_VOICES`) that express emotion in another prosody style (:data:`OTHER_EMOTION_PROSODY`).

The output is deterministic for a given seed and size. eSpeak NG carries synthesis state from
one utterance to the next inside a process, so every dialog and chapter is synthesised in a
fresh process with its random generators seeded per utterance. A finished corpus is recorded in
``demo_corpus.json``; a rerun with the same parameters reuses it, and the recipes (which ask for no
particular size) reuse any demo corpus of this generator version, e.g. a smaller one made here with
``--sessions 2 --turns-per-dialog 4``.

Usage: ``python local/make_demo_corpus.py --out corpora/demo [--seed 0] [--nj 2]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_lexicon  # noqa: E402

logger = logging.getLogger("make_demo_corpus")

GENERATOR_VERSION = 9  # 9: arousal and dominance ratings follow each utterance's prosody
SAMPLE_RATE = 16000

# (female voice, male voice) per session; none of them reads the ASR corpus.
EMOTION_VOICES = [
    ("en-us+f1", "en-us+m1"),
    ("en+f2", "en+m2"),
    ("en-gb-x-rp+f3", "en-gb-x-rp+m3"),
    ("en-gb-scotland+f4", "en-gb-x-gbclan+m4"),
    ("en-us-nyc+linda", "en-029+m5"),
]
ASR_TRAIN_VOICES = [
    ("en+m6", "M"), ("en-us+m7", "M"), ("en-gb-x-rp+m8", "M"), ("en-gb-scotland+john", "M"),
    ("en-us-nyc+Alex", "M"), ("en+f5", "F"), ("en-us+steph", "F"), ("en-gb-x-gbcwmd+Andrea", "F"),
    ("en-029+belinda", "F"), ("en-gb-x-rp+shelby", "F"),
]
ASR_DEV_VOICES = [("en-us+david", "M"), ("en-gb-x-rp+Annie", "F")]
ASR_TEST_VOICES = [("en+edward", "M"), ("en-us+aunty", "F")]

# Prosody offsets per rendered emotion, relative to the speaker's own base:
# rate (words/min), pitch (0-100), pitch range (0-100), volume (0-200), vocal effort (saturation).
EMOTION_PROSODY = {
    "neu": (0, 0, 0, 0, 0.0),
    "hap": (20, 14, 30, 15, 0.0),
    "exc": (35, 18, 40, 35, 0.3),
    "ang": (30, 4, 15, 60, 1.0),
    "sad": (-50, -14, -30, -35, 0.0),
    "fru": (10, -2, 5, 30, 0.5),
    "sur": (5, 25, 45, 20, 0.0),
}
# Per-utterance jitter (standard deviations) of the same five quantities: it makes classes overlap.
PROSODY_JITTER = (12.0, 5.0, 10.0, 15.0, 0.25)
# Pauses between words (eSpeak's word gap, 10 ms units): sad speech hesitates, aroused speech runs on.
WORD_GAP = {"neu": 2, "hap": 0, "exc": 0, "ang": 0, "sad": 16, "fru": 4, "sur": 3}
WORD_GAP_JITTER = 3.0
# The second demo corpus (``style="other"``, cross-corpus evaluation): other voices, none of which reads the
# first demo corpus or its ASR corpus, and another way of expressing emotion: pitch and pitch range carry
# more of it, speaking rate less, anger is louder but hardly faster, and sad speech pauses less.
OTHER_EMOTION_VOICES = [
    ("en-us+Alicia", "en-us+ian"),
    ("en-gb-x-rp+anika", "en-gb-x-rp+benjamin"),
    ("en-gb-scotland+grandma", "en-gb-scotland+paul"),
    ("en-029+steph3", "en-029+rob"),
]
OTHER_EMOTION_PROSODY = {
    "neu": (0, 0, 0, 0, 0.0),
    "hap": (8, 22, 45, 8, 0.0),
    "exc": (15, 26, 55, 25, 0.2),
    "ang": (10, 10, 30, 70, 0.7),
    "sad": (-30, -18, -40, -20, 0.0),
    "fru": (5, 2, 12, 25, 0.4),
    "sur": (0, 30, 55, 15, 0.0),
}
OTHER_WORD_GAP = {"neu": 3, "hap": 1, "exc": 0, "ang": 2, "sad": 9, "fru": 4, "sur": 2}


@dataclass(frozen=True)
class Style:
    """How a demo corpus's speakers sound: voice pairs per session, prosody offsets per emotion,
    word gaps per emotion and the mean base speaking rate (words/min)."""

    voices: list
    prosody: dict
    word_gap: dict
    base_rate: float


STYLES = {
    "default": Style(EMOTION_VOICES, EMOTION_PROSODY, WORD_GAP, 165.0),
    "other": Style(OTHER_EMOTION_VOICES, OTHER_EMOTION_PROSODY, OTHER_WORD_GAP, 150.0),
}
EMOTION_MIXTURE = {"neu": 0.26, "hap": 0.12, "exc": 0.12, "ang": 0.15, "sad": 0.15, "fru": 0.13, "sur": 0.07}

EVALUATOR_WORD = {
    "neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness",
    "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other",
}
WORD_CODE = {w: c for c, w in EVALUATOR_WORD.items()}
# What an evaluator says instead when they do not perceive the rendered emotion.
CONFUSIONS = {
    "neu": ["fru", "sad", "hap"],
    "hap": ["exc", "neu", "sur"],
    "exc": ["hap", "sur", "ang"],
    "ang": ["fru", "exc"],
    "sad": ["neu", "fru"],
    "fru": ["ang", "neu", "sad"],
    "sur": ["exc", "hap", "fea"],
}
# Valence, activation, dominance prototypes (1-5 scale) per rendered emotion.
VAD_PROTOTYPE = {
    "neu": (3.0, 2.5, 2.8), "hap": (4.0, 3.2, 3.0), "exc": (4.2, 4.0, 3.4), "ang": (1.8, 4.0, 4.0),
    "sad": (1.8, 2.0, 2.0), "fru": (2.0, 3.3, 3.0), "sur": (3.5, 3.8, 2.8),
}
# How far a rater's arousal / dominance moves per standard deviation of an utterance's prosody jitter (rate,
# pitch range, volume, vocal effort for arousal; volume and effort for dominance): within a class, a faster,
# wider, louder, more effortful rendering is heard as more aroused. Valence has no prosodic cue here.
AROUSAL_PER_JITTER_SD, DOMINANCE_PER_JITTER_SD = 0.3, 0.3
SPECIAL_TOKENS = ["[LAUGHTER]", "[BREATHING]"]
QUESTION_WORDS = {"did", "where", "why", "what", "how", "are", "do"}


@dataclass
class DemoConfig:
    seed: int = 0
    sessions: int = 5
    dialogs_per_session: int = 6
    turns_per_dialog: int = 28
    asr_train_minutes: float = 60.0
    asr_eval_minutes: float = 6.0
    style: str = "default"  # a key of STYLES; "other" is the cross-corpus demo corpus

    def key(self) -> dict:
        key = {"generator_version": GENERATOR_VERSION, **asdict(self)}
        if self.style == "default":  # the key of corpora made before styles existed
            del key["style"]
        return key


# The second demo corpus: 2 sessions (4 speakers, 160 turns) of the other style, no ASR corpus.
OTHER_DEMO_CONFIG = DemoConfig(seed=11, sessions=2, dialogs_per_session=4, turns_per_dialog=20,
                               asr_train_minutes=0.0, asr_eval_minutes=0.0, style="other")


@dataclass
class SynthJob:
    """One utterance to synthesise and post-process."""

    path: str
    text: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    volume: int
    effort: float
    gain_db: float
    noise_db: float
    seed: int
    fmt: str = "WAV"
    word_gap: int = 0


@dataclass
class Turn:
    utt_id: str
    dialog: str
    speaker_gender: str
    emotion: str  # the rendered emotion
    text: str  # the spoken words
    transcript: str  # as written in transcriptions/*.txt
    votes: list = field(default_factory=list)  # [(evaluator, [codes])]
    vad: list = field(default_factory=list)  # [(evaluator, v, a, d)]
    self_votes: list = field(default_factory=list)
    duration: float = 0.0
    start: float = 0.0
    end: float = 0.0


# ----------------------------------------------------------------------------------------------
# eSpeak NG through ctypes


class Espeak:
    """Minimal synchronous wrapper of libespeak-ng shipped by ``espeakng-loader``."""

    RATE, VOLUME, PITCH, RANGE, WORDGAP = 1, 2, 3, 4, 7

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.libc = ctypes.CDLL(None)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed: is the espeakng-loader package complete?")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback_type(collect)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, volume: int, seed: int,
              word_gap: int = 0) -> np.ndarray:
        """Synthesise ``text``; returns int16 samples at ``self.sample_rate``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((self.RATE, rate), (self.VOLUME, volume), (self.PITCH, pitch), (self.RANGE, pitch_range),
                             (self.WORDGAP, word_gap)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        # Breath and frication noise come from eSpeak's generator and from libc rand().
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self.libc.srand(ctypes.c_uint(seed))
        self._chunks = []
        data = text.encode() + b"\0"
        status = self.lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, CHARS_UTF8
        self.lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise RuntimeError(f"espeak_Synth failed ({status}) for {text!r} with voice {voice!r}")
        return np.concatenate(self._chunks)


def _render(job: SynthJob, engine: Espeak) -> int:
    """Synthesise, shape, resample, add silence and noise; write the file; return its samples."""
    import soundfile as sf

    raw = engine.synth(job.text, job.voice, job.rate, job.pitch, job.pitch_range, job.volume, job.seed % (2**31),
                       job.word_gap)
    x = raw.astype(np.float64) / 32768.0
    if job.effort > 0:  # pressed, effortful voice: soft saturation raises the harmonics
        drive = 1.0 + 3.0 * job.effort
        peak = max(np.abs(x).max(), 1e-6)
        x = np.tanh(drive * x / peak) / np.tanh(drive) * peak
    x = resample_sinc(x, engine.sample_rate, SAMPLE_RATE)
    rng = np.random.default_rng(job.seed)
    lead, trail = rng.uniform(0.08, 0.3, size=2)
    x = np.concatenate([np.zeros(int(lead * SAMPLE_RATE)), x, np.zeros(int(trail * SAMPLE_RATE))])
    x *= 10 ** (job.gain_db / 20)
    x += rng.standard_normal(len(x)) * 10 ** (job.noise_db / 20)
    x = np.clip(x, -1.0, 1.0)
    os.makedirs(os.path.dirname(job.path), exist_ok=True)
    sf.write(job.path, x.astype(np.float32), SAMPLE_RATE, subtype="PCM_16", format=job.fmt)
    return len(x)


def resample_sinc(x: np.ndarray, orig_sr: int, target_sr: int, half_width: int = 16) -> np.ndarray:
    """Polyphase windowed-sinc resampling in NumPy (scipy.signal takes seconds to import in every
    worker). Output sample n sits at input position n * orig_sr / target_sr."""
    if orig_sr == target_sr:
        return x
    g = int(np.gcd(orig_sr, target_sr))
    up, down = target_sr // g, orig_sr // g
    cutoff = 0.95 * min(1.0, up / down)  # low-pass below the lower Nyquist frequency
    taps = np.arange(-half_width + 1, half_width + 1)
    # One filter per phase: the fractional position (p / up) of an output sample between inputs.
    offset = (np.arange(up) / up)[:, None] - taps[None, :]
    table = cutoff * np.sinc(cutoff * offset) * (0.5 + 0.5 * np.cos(np.pi * offset / half_width))
    table /= table.sum(axis=1, keepdims=True)
    n_out = int(len(x) * up / down)
    padded = np.ascontiguousarray(np.concatenate([np.zeros(half_width), x, np.zeros(half_width + down + 1)]), np.float64)
    out = np.empty(n_out)
    # Outputs p, p + up, p + 2 up, ... share a phase and step ``down`` inputs apart: one strided window
    # view times the phase's filter each (a gather of every window would copy 2 x taps x n values).
    for p in range(min(up, n_out)):
        base = (p * down) // up + taps[0] + half_width
        count = (n_out - 1 - p) // up + 1
        windows = np.lib.stride_tricks.as_strided(padded[base:], shape=(count, len(taps)),
                                                  strides=(down * padded.strides[0], padded.strides[0]))
        out[p::up] = windows @ table[(p * down) % up]
    return out


def synthesize_jobs(jobs: list[SynthJob]) -> list[int]:
    """Run in a fresh process: eSpeak's state then depends only on this job list."""
    engine = Espeak()
    return [_render(job, engine) for job in jobs]


def run_tasks(tasks: list[list[SynthJob]], nj: int) -> list[list[int]]:
    """Synthesise task lists, each in a new process (``maxtasksperchild=1``), keeping task order."""
    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=max(1, nj), maxtasksperchild=1) as pool:
        results = list(tqdm(pool.imap(synthesize_jobs, tasks), total=len(tasks), desc="synthesising", unit="task"))
    return results


def run_grouped(tasks: list[list[SynthJob]], groups: list, nj: int) -> list[list[int]]:
    """Synthesise consecutive tasks of the same group in one process; results per original task."""
    merged, sizes = [], []
    for i, (task, group) in enumerate(zip(tasks, groups)):
        if i and group == groups[i - 1]:
            merged[-1] = merged[-1] + task
            sizes[-1].append(len(task))
        else:
            merged.append(list(task))
            sizes.append([len(task)])
    results = []
    for samples, parts in zip(run_tasks(merged, nj), sizes):
        start = 0
        for n in parts:
            results.append(samples[start : start + n])
            start += n
    return results


# ----------------------------------------------------------------------------------------------
# Planning (all random choices are drawn here, from one generator seeded by --seed)


def _jittered(rng, emotion, base, prosody=EMOTION_PROSODY):
    offsets = prosody[emotion]
    rate, pitch, prange, volume, effort = (b + o + rng.normal(0, s) for b, o, s in zip(base, offsets, PROSODY_JITTER))
    return (
        int(np.clip(rate, 90, 320)),
        int(np.clip(pitch, 5, 99)),
        int(np.clip(prange, 0, 100)),
        int(np.clip(volume, 30, 200)),
        float(np.clip(effort, 0.0, 1.5)),
    )


def _written(text: str, rng: np.random.Generator) -> str:
    """Transcript as IEMOCAP writes it: sentence case, punctuation, sometimes a non-speech token."""
    words = ["I" if w == "i" else w for w in text.split()]
    words[0] = words[0][:1].upper() + words[0][1:]
    sentence = " ".join(words) + ("?" if text.split()[0] in QUESTION_WORDS else ".")
    if rng.random() < 0.1:
        token = SPECIAL_TOKENS[int(rng.integers(len(SPECIAL_TOKENS)))]
        sentence = f"{token} {sentence}" if rng.random() < 0.5 else f"{sentence} {token}"
    return sentence


def _evaluate(rng: np.random.Generator, emotion: str, evaluators: list[str]):
    """Three evaluators' categorical votes (sometimes several labels) and the noise of their dimensional
    ratings ``(evaluator, v, a, d)``; :func:`_ratings` adds what the utterance sounds like."""
    votes, vad = [], []
    for ev in evaluators:
        primary = emotion if rng.random() < 0.78 else str(rng.choice(CONFUSIONS[emotion]))
        labels = [primary]
        if rng.random() < 0.12:
            extra = str(rng.choice(CONFUSIONS[emotion] + [emotion]))
            if extra != primary:
                labels.append(extra)
        votes.append((ev, labels))
        vad.append((ev, *(rng.normal(0, 0.6) for _ in VAD_PROTOTYPE[emotion])))
    return votes, vad


def _perceived_vad(emotion: str, rendered: tuple, base: tuple, prosody: dict) -> tuple[float, float, float]:
    """Valence, arousal, dominance (1-5) a rater hears in one rendering: the emotion's prototype, arousal and
    dominance moved by how far the utterance's prosody ``rendered`` (rate, pitch, range, volume, effort) lies
    from its emotion's setting for the speaker (``base`` + offsets), in jitter standard deviations."""
    z = [(r - b - o) / s for r, b, o, s in zip(rendered, base, prosody[emotion], PROSODY_JITTER)]
    v, a, d = VAD_PROTOTYPE[emotion]
    return v, a + AROUSAL_PER_JITTER_SD * (z[0] + z[2] + z[3] + z[4]), d + DOMINANCE_PER_JITTER_SD * (z[3] + z[4])


def _ratings(noise: list, perceived: tuple) -> list:
    """Each evaluator's integer ratings (1-5): what they hear plus their own noise."""
    return [(ev, *(int(np.clip(round(p + n), 1, 5)) for p, n in zip(perceived, offsets))) for ev, *offsets in noise]


def consensus_code(votes: list) -> str:
    """The IEMOCAP-style consensus: the one label at least two evaluators gave, else ``xxx``."""
    counts: dict[str, int] = {}
    for _, labels in votes:
        for code in set(labels):
            counts[code] = counts.get(code, 0) + 1
    best = max(counts.values())
    winners = [c for c, n in counts.items() if n == best]
    return winners[0] if best >= 2 and len(winners) == 1 else "xxx"


def plan_emotion_corpus(cfg: DemoConfig, root: str, rng: np.random.Generator):
    """Return ``(dialogs, tasks)``: dialog metadata and one synthesis task per dialog."""
    dialogs, tasks = [], []
    style = STYLES[cfg.style]
    gap_rng = np.random.default_rng([cfg.seed, 7])  # its own stream: the other draws stay as they were
    emotions = list(EMOTION_MIXTURE)
    probs = np.array([EMOTION_MIXTURE[e] for e in emotions])
    scripts = {}  # scripted dialogs share their lines across sessions, as in IEMOCAP
    for s in range(1, cfg.sessions + 1):
        female_voice, male_voice = style.voices[(s - 1) % len(style.voices)]
        speaker_base = {}
        for gender in "FM":
            speaker_base[gender] = (
                rng.normal(style.base_rate, 12), rng.normal(50, 6), rng.normal(50, 6), 100.0, 0.0
            )
        gain = {g: rng.uniform(-4, 2) for g in "FM"}
        for d in range(cfg.dialogs_per_session):
            marker = "F" if d % 2 == 0 else "M"
            kind = "impro" if d < (cfg.dialogs_per_session + 1) // 2 else "script"
            number = d // 2 + 1 if kind == "impro" else (d - (cfg.dialogs_per_session + 1) // 2) // 2 + 1
            name = f"Ses{s:02d}{marker}_{kind}{number:02d}" + ("_1" if kind == "script" else "")
            if kind == "script" and name[6:] in scripts:
                lines = scripts[name[6:]]
            else:
                lines = [demo_lexicon.dialog_sentence(rng) for _ in range(cfg.turns_per_dialog)]
                if kind == "script":
                    scripts[name[6:]] = lines
            mood = str(rng.choice(emotions, p=probs))
            evaluators = sorted(rng.choice([f"E{i}" for i in range(1, 7)], size=3, replace=False).tolist())
            counters = {"F": 0, "M": 0}
            turns, jobs = [], []
            first = "F" if rng.random() < 0.5 else "M"
            for t in range(cfg.turns_per_dialog):
                gender = first if t % 2 == 0 else ("M" if first == "F" else "F")
                emotion = mood if rng.random() < 0.5 else str(rng.choice(emotions, p=probs))
                utt = f"{name}_{gender}{counters[gender]:03d}"
                counters[gender] += 1
                text = lines[t]
                votes, rating_noise = _evaluate(rng, emotion, evaluators)
                self_votes = []
                if kind == "impro" and rng.random() < 0.5:
                    self_votes = [(f"{gender}1", [emotion if rng.random() < 0.7 else str(rng.choice(CONFUSIONS[emotion]))])]
                turn = Turn(utt, name, gender, emotion, text, _written(text, rng), votes, [], self_votes)
                rate, pitch, prange, volume, effort = _jittered(rng, emotion, speaker_base[gender], style.prosody)
                turn.vad = _ratings(rating_noise, _perceived_vad(emotion, (rate, pitch, prange, volume, effort),
                                                                 speaker_base[gender], style.prosody))
                voice = female_voice if gender == "F" else male_voice
                path = os.path.join(root, f"Session{s}", "sentences", "wav", name, f"{utt}.wav")
                gap = int(np.clip(round(style.word_gap[emotion] + gap_rng.normal(0, WORD_GAP_JITTER)), 0, 40))
                jobs.append(SynthJob(path, text, voice, rate, pitch, prange, volume, effort,
                                     gain[gender] + rng.normal(0, 1.0), rng.uniform(-58, -48),
                                     int(rng.integers(2**31)), word_gap=gap))
                turns.append(turn)
            dialogs.append({"session": s, "name": name, "turns": turns})
            tasks.append(jobs)
    return dialogs, tasks


def plan_librispeech(cfg: DemoConfig, root: str, rng: np.random.Generator):
    """Return ``(chapters, tasks)`` for train-clean-100, dev-clean and test-clean."""
    chapters, tasks = [], []
    used_ids = set()

    def new_id(low, high):
        while True:
            i = int(rng.integers(low, high))
            if i not in used_ids:
                used_ids.add(i)
                return i

    for subset, voices, minutes, n_chapters in (
        ("train-clean-100", ASR_TRAIN_VOICES, cfg.asr_train_minutes, 2),
        ("dev-clean", ASR_DEV_VOICES, cfg.asr_eval_minutes, 1),
        ("test-clean", ASR_TEST_VOICES, cfg.asr_eval_minutes, 1),
    ):
        per_chapter = 1.04 * minutes * 60.0 / (len(voices) * n_chapters)
        for voice, gender in voices:
            spk = new_id(100, 9999)
            base_rate, base_pitch = rng.normal(170, 10), rng.normal(50, 6)
            for _ in range(n_chapters):
                chapter = new_id(10000, 99999)
                folder = os.path.join(root, subset, str(spk), str(chapter))
                jobs, texts, estimate, n = [], [], 0.0, 0
                while estimate < per_chapter:
                    text = demo_lexicon.read_sentence(rng)  # one clause: short utterances, many updates per epoch
                    rate = int(np.clip(base_rate + rng.normal(0, 10), 120, 230))
                    utt = f"{spk}-{chapter}-{n:04d}"
                    jobs.append(SynthJob(os.path.join(folder, f"{utt}.flac"), text, voice, rate,
                                         int(np.clip(base_pitch + rng.normal(0, 4), 10, 90)),
                                         int(np.clip(rng.normal(50, 10), 10, 90)),
                                         int(np.clip(rng.normal(100, 8), 60, 140)), 0.0,
                                         rng.normal(-1, 1.5), rng.uniform(-60, -50), int(rng.integers(2**31)),
                                         fmt="FLAC"))
                    texts.append((utt, text.upper()))
                    # eSpeak speaks about a third faster than its nominal words/min on these sentences.
                    estimate += 0.75 * (len(text.split()) * 60.0 / rate + 0.45)
                    n += 1
                chapters.append({"subset": subset, "speaker": spk, "gender": gender, "chapter": chapter,
                                 "folder": folder, "texts": texts, "voice": voice})
                tasks.append(jobs)
    return chapters, tasks


# ----------------------------------------------------------------------------------------------
# Writing the metadata files


def _time(x: float, width: int = 0) -> str:
    return f"{x:0{width}.4f}" if width else f"{x:.4f}"


def write_iemocap_metadata(root: str, dialogs: list[dict], rng: np.random.Generator) -> None:
    for dialog in dialogs:
        s, name, turns = dialog["session"], dialog["name"], dialog["turns"]
        t = rng.uniform(1.0, 4.0)
        for turn in turns:  # alternating turns with gaps, sometimes overlapping
            turn.start = t
            turn.end = t + turn.duration
            t = turn.end + rng.uniform(-0.4, 1.5)
            t = max(t, turn.start + 0.2)
        base = os.path.join(root, f"Session{s}", "dialog")
        order = list(turns)
        if s == 2:  # IEMOCAP quirk: some Session 2 files are not in time order
            order = [x for x in turns if x.speaker_gender == "F"] + [x for x in turns if x.speaker_gender == "M"]
        emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for turn in order:
            v, a, d = (np.mean([r[i] for r in turn.vad]) for i in (1, 2, 3))
            emo.append(f"[{_time(turn.start)} - {_time(turn.end)}]\t{turn.utt_id}\t{consensus_code(turn.votes)}\t"
                       f"[{v:.4f}, {a:.4f}, {d:.4f}]")
            for ev, labels in turn.votes:
                words = " ".join(f"{EVALUATOR_WORD[c]};" for c in labels)
                emo.append(f"C-{ev}:\t{words}\t()")
            for ev, labels in turn.self_votes:
                emo.append(f"C-{ev}:\t{EVALUATOR_WORD[labels[0]]};\t(self)")
            for ev, vv, aa, dd in turn.vad:
                emo.append(f"A-{ev}:\tval {vv}; act {aa}; dom  {dd};\t()")
            emo.append("")
        _write(os.path.join(base, "EmoEvaluation", f"{name}.txt"), "\n".join(emo) + "\n")
        # The per-evaluator subfolders of the real release: not utterance files.
        _write(os.path.join(base, "EmoEvaluation", "Categorical", f"{name}_e1_cat.txt"),
               "".join(f"{x.utt_id} :{EVALUATOR_WORD[x.votes[0][1][0]]}; ()\n" for x in turns))
        _write(os.path.join(base, "EmoEvaluation", "Attribute", f"{name}_e1_atr.txt"),
               "".join(f"{x.utt_id} :act {x.vad[0][2]}; val {x.vad[0][1]}; dom {x.vad[0][3]}; ()\n" for x in turns))
        trans = [f"{x.utt_id} [{_time(x.start, 8)}-{_time(x.end, 8)}]: {x.transcript}" for x in order]
        # Lines that carry no label: an XX id and a line without a time stamp.
        trans.insert(min(3, len(trans)), f"{name}_MXX0 [{_time(turns[0].end + 0.1, 8)}-{_time(turns[0].end + 0.5, 8)}]: Mm-hmm.")
        trans.append(f"{name}_F999: [BREATHING]")
        _write(os.path.join(base, "transcriptions", f"{name}.txt"), "\n".join(trans) + "\n")


def write_librispeech_metadata(root: str, chapters: list[dict]) -> None:
    lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    seen = set()
    for ch in chapters:
        _write(os.path.join(ch["folder"], f"{ch['speaker']}-{ch['chapter']}.trans.txt"),
               "".join(f"{utt} {text}\n" for utt, text in ch["texts"]))
        if ch["speaker"] not in seen:
            seen.add(ch["speaker"])
            lines.append(f"{ch['speaker']:<5}| {ch['gender']} | {ch['subset']:<17}| 25.00 | espeak {ch['voice']}")
    _write(os.path.join(root, "SPEAKERS.TXT"), "\n".join(lines) + "\n")


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ----------------------------------------------------------------------------------------------


def corpus_paths(out: str) -> dict:
    return {"iemocap": os.path.join(out, "IEMOCAP_full_release"), "librispeech": os.path.join(out, "LibriSpeech")}


def make_demo_corpus(out: str, cfg: DemoConfig | None = None, nj: int = 2, style: str = "default") -> dict:
    """Generate (or reuse) the demo corpora under ``out``; return their root folders and counts.

    A corpus already in ``out`` is reused when it was made with ``cfg``, or, with ``cfg=None`` (any
    size will do), by this generator version in ``style``; otherwise ``cfg`` (default:
    :class:`DemoConfig`, or :data:`OTHER_DEMO_CONFIG` for ``style="other"``) is made."""
    if cfg is None and style not in STYLES:
        raise ValueError(f"unknown demo corpus style {style!r}; known: {sorted(STYLES)}")
    default = DemoConfig() if style == "default" else OTHER_DEMO_CONFIG
    stamp = os.path.join(out, "demo_corpus.json")
    if os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as f:
            info = json.load(f)
        made_with = info.get("config", {})
        any_size = (cfg is None and made_with.get("generator_version") == GENERATOR_VERSION
                    and made_with.get("style", "default") == style)
        made_style, wanted_style = made_with.get("style", "default"), (cfg or default).style
        if made_style != wanted_style:  # never replace the one demo corpus by the other
            raise FileExistsError(f"{out}: holds the demo corpus of style {made_style!r}, not {wanted_style!r}; "
                                  "choose another folder")
        if made_with == (cfg or default).key() or any_size:
            logger.info("reusing the demo corpus in %s (%s)", out, made_with)
            return {**corpus_paths(out), **info}
        logger.info("demo corpus in %s was made with other parameters: regenerating", out)
    elif os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out}: folder exists, is not empty and holds no demo_corpus.json; choose another --out")
    cfg = cfg or default

    started = time.time()
    tmp = f"{out.rstrip('/')}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(cfg.seed)
    tmp_paths = corpus_paths(tmp)
    dialogs, emo_tasks = plan_emotion_corpus(cfg, tmp_paths["iemocap"], rng)
    # an emotion corpus only (the default style plans the ASR corpus always: its draws shape the rest)
    no_asr = cfg.style != "default" and cfg.asr_train_minutes <= 0 and cfg.asr_eval_minutes <= 0
    chapters, asr_tasks = ([], []) if no_asr else plan_librispeech(cfg, tmp_paths["librispeech"], rng)
    # One process per session and per ASR speaker: fewer process start-ups, same bytes.
    groups = [d["session"] for d in dialogs] + [(c["subset"], c["speaker"]) for c in chapters]
    results = run_grouped(emo_tasks + asr_tasks, groups, nj)

    for dialog, samples in zip(dialogs, results[: len(emo_tasks)]):
        for turn, n in zip(dialog["turns"], samples):
            turn.duration = n / SAMPLE_RATE
    write_iemocap_metadata(tmp_paths["iemocap"], dialogs, rng)
    if not no_asr:
        write_librispeech_metadata(tmp_paths["librispeech"], chapters)

    asr_seconds = {}
    for chapter, samples in zip(chapters, results[len(emo_tasks):]):
        asr_seconds[chapter["subset"]] = asr_seconds.get(chapter["subset"], 0.0) + sum(samples) / SAMPLE_RATE
    turns = [t for d in dialogs for t in d["turns"]]
    consensus = [consensus_code(t.votes) for t in turns]
    info = {
        "config": cfg.key(),
        "emotion_turns": len(turns),
        "emotion_hours": round(sum(t.duration for t in turns) / 3600, 3),
        "consensus_counts": {c: consensus.count(c) for c in sorted(set(consensus))},
        "target_class_turns": sum(c in ("ang", "hap", "exc", "neu", "sad") for c in consensus),
        "asr_hours": {k: round(v / 3600, 3) for k, v in asr_seconds.items()},
        "asr_utterances": {s: sum(len(c["texts"]) for c in chapters if c["subset"] == s) for s in asr_seconds},
        "vocabulary_size": len(demo_lexicon.vocabulary()),
        "seconds_to_generate": round(time.time() - started, 1),
    }
    with open(os.path.join(tmp, "demo_corpus.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("demo corpus written to %s in %.1f s: %s", out, time.time() - started, json.dumps(info))
    return {**corpus_paths(out), **info}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (reused if it holds the same demo corpus)")
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    for name, value in asdict(DemoConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            **({"choices": sorted(STYLES)} if name == "style" else {}))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = DemoConfig(**{k: getattr(args, k) for k in asdict(DemoConfig())})
    make_demo_corpus(args.out, cfg, nj=args.nj)


if __name__ == "__main__":
    main()
