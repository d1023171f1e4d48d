"""Tiny emotion corpora in each corpus's real layout, quirks included; each writer returns the
corpus root (the CSV file for the generic CSV corpus).

The preparer tests (``test_prepare_*.py``) check the manifests read from them; the end-to-end
matrix (``test_corpora_e2e.py``) runs both recipes on them. Audio is a constant signal of a tenth of
a second or so: the preparers read headers, and the recipes only need something to compute on.
"""

from __future__ import annotations

import json
import os

import numpy as np
import soundfile as sf


def write_wav(path, seconds: float = 0.1, sr: int = 16000, channels: int = 1, value: float = 0.1) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    data = np.full((int(round(seconds * sr)), channels), value, dtype=np.float32)
    sf.write(str(path), data[:, 0] if channels == 1 else data, sr, subtype="PCM_16")


# ----------------------------------------------------------------------------------------------
# EmoDB: wav/<spk><text><emotion><version>.wav, a misnamed file, macOS debris, a non-audio file

# one file per speaker (all ten) plus a second one for speaker 03
EMODB_FILES = ["03a01Fa", "03a02Na", "08a02Wb", "09b01Lc", "10a04Ea", "11b02Aa", "12a05Ta", "13b03Na", "14a07Fb",
               "15b09Wa", "16b10Ta"]


def write_emodb(root) -> str:
    for stem in EMODB_FILES:
        write_wav(os.path.join(root, "wav", f"{stem}.wav"), 0.25 if stem == "03a01Fa" else 0.1)
    write_wav(os.path.join(root, "wav", "03a01F.wav"))  # misnamed: no version letter
    write_wav(os.path.join(root, "wav", "._03a01Fa.wav"))  # macOS debris, silently ignored
    with open(os.path.join(root, "wav", "readme.txt"), "w") as f:
        f.write("not audio")
    return root


# ----------------------------------------------------------------------------------------------
# RAVDESS: Actor_XX/03-01-EE-II-SS-RR-AA.wav at 48 kHz, one stereo file, a song file, a misnamed
# file, macOS debris, a video file

RAVDESS_SR = 48000
# (actor folder, file stem, seconds): two speech files per actor.
RAVDESS_SPEECH = [
    ("Actor_01", "03-01-01-01-01-01-01", 0.2),  # neutral, statement 1 (stereo)
    ("Actor_01", "03-01-06-02-02-01-01", 0.1),  # fearful, strong, statement 2
    ("Actor_02", "03-01-02-01-01-01-02", 0.1),  # calm
    ("Actor_02", "03-01-03-02-02-01-02", 0.1),  # happy
    ("Actor_03", "03-01-04-01-01-01-03", 0.1),  # sad
    ("Actor_03", "03-01-05-02-01-02-03", 0.15),  # angry
    ("Actor_04", "03-01-07-01-02-01-04", 0.1),  # disgust
    ("Actor_04", "03-01-04-01-01-02-04", 0.1),  # sad
    ("Actor_05", "03-01-05-01-01-01-05", 0.1),  # angry
    ("Actor_05", "03-01-03-01-02-01-05", 0.1),  # happy
    ("Actor_06", "03-01-01-01-02-01-06", 0.1),  # neutral
    ("Actor_06", "03-01-08-02-01-01-06", 0.1),  # surprised
]
RAVDESS_STEREO = "03-01-01-01-01-01-01"


def write_ravdess(root) -> str:
    for actor, stem, seconds in RAVDESS_SPEECH:
        path = os.path.join(root, actor, f"{stem}.wav")
        if stem == RAVDESS_STEREO:  # left 0.25, right 0.75: the mono mix is 0.5
            os.makedirs(os.path.dirname(path), exist_ok=True)
            n = int(seconds * RAVDESS_SR)
            data = np.stack([np.full(n, 0.25), np.full(n, 0.75)], axis=1)
            sf.write(path, data.astype(np.float32), RAVDESS_SR, subtype="PCM_16")
        else:
            write_wav(path, seconds, RAVDESS_SR)
    write_wav(os.path.join(root, "Actor_01", "03-02-03-01-01-01-01.wav"), 0.1, RAVDESS_SR)  # song: channel 02
    write_wav(os.path.join(root, "Actor_02", "notes.wav"), 0.1, RAVDESS_SR)  # misnamed
    write_wav(os.path.join(root, "__MACOSX", "Actor_01", "._03-01-01-01-01-01-01.wav"), 0.1, RAVDESS_SR)  # debris
    with open(os.path.join(root, "Actor_03", "03-01-05-02-01-02-03.mp4"), "wb") as f:  # video, not .wav
        f.write(b"not audio")
    return root


# EmoBox's folds of the RAVDESS fixture, in EmoBox's exact format (github.com/emo-box/EmoBox, data/ravdess/):
# fold_<k>/ravdess_{train,test}_fold_<k>.jsonl, one JSON record per line, and label_map.json.
EMOBOX_RAVDESS_EMO = {"01": "Neutral", "02": "Calm", "03": "Happy", "04": "Sad", "05": "Angry", "06": "Fearful",
                      "07": "Disgust", "08": "Surprised"}
EMOBOX_RAVDESS_LABEL_MAP = {"Angry": "Angry", "Surprised": "Surprise", "Sad": "Sad", "Disgust": "Disgust",
                            "Happy": "Happy", "Calm": "Calm", "Neutral": "Neutral", "Fearful": "Fear"}


def emobox_record(dataset: str, key: str, wav: str, emo: str, sr: int, seconds: float) -> dict:
    return {"key": key, "dataset": dataset, "wav": wav, "type": "raw", "sample_rate": sr,
            "num_frame": float(round(seconds * sr)), "task": "category", "length": seconds, "emo": emo, "channel": 1}


def write_emobox_ravdess(root, test_actors=(("01", "02"), ("03", "04"), ("05", "06")), extra_key=None) -> str:
    """EmoBox's ``data/`` for the RAVDESS fixture, one fold per group of ``test_actors``; ``extra_key`` adds a
    test record whose key matches no file. Returns the checkout root."""
    folder = os.path.join(root, "data", "ravdess")
    records = {}
    for actor, stem, seconds in RAVDESS_SPEECH:
        wav = f"downloads/ravdess/audio/Audio_Speech_Actors_01-24/{actor}/{stem}.wav"
        records.setdefault(stem[-2:], []).append(
            emobox_record("ravdess", f"ravdess-{stem}", wav, EMOBOX_RAVDESS_EMO[stem.split("-")[2]], RAVDESS_SR, seconds))
    for k, tested in enumerate(test_actors, 1):
        test = [r for a in tested for r in records[a]]
        train = [r for a in sorted(records) if a not in tested for r in records[a]]
        if extra_key and k == 1:
            test.append(emobox_record("ravdess", extra_key, "downloads/ravdess/x.wav", "Sad", RAVDESS_SR, 1.0))
        os.makedirs(os.path.join(folder, f"fold_{k}"), exist_ok=True)
        for split, rows in (("train", train), ("test", test)):
            with open(os.path.join(folder, f"fold_{k}", f"ravdess_{split}_fold_{k}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(folder, "label_map.json"), "w") as f:
        json.dump(EMOBOX_RAVDESS_LABEL_MAP, f, indent=4)
    return root


# ----------------------------------------------------------------------------------------------
# CREMA-D: AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, VideoDemographics.csv, a misnamed file

CREMAD_FILES = [  # (name, seconds)
    ("1001_DFA_ANG_XX.wav", 0.1), ("1001_IEO_HAP_HI.wav", 0.2),
    ("1002_TIE_SAD_LO.wav", 0.1), ("1002_IOM_NEU_XX.wav", 0.1),
    ("1003_IWW_FEA_MD.wav", 0.1), ("1003_TAI_DIS_HI.wav", 0.1),
    ("1004_MTI_NEU_XX.wav", 0.1), ("1004_IWL_ANG_LO.wav", 0.3),
]
CREMAD_DEMOGRAPHICS = "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n" \
                      "1002,21,Female,Caucasian,Not Hispanic\n1003,21,Female,Caucasian,Not Hispanic\n" \
                      "1004,42,Male,Caucasian,Not Hispanic\n"


def write_cremad(root) -> str:
    for name, seconds in CREMAD_FILES:
        write_wav(os.path.join(root, "AudioWAV", name), seconds)
    write_wav(os.path.join(root, "AudioWAV", "1005_DFA_ANG.wav"))  # misnamed: no level
    with open(os.path.join(root, "VideoDemographics.csv"), "w") as f:
        f.write(CREMAD_DEMOGRAPHICS)
    return root


# ----------------------------------------------------------------------------------------------
# Generic CSV: relative and absolute paths, a FLAC file elsewhere, partial transcripts, groups


def write_csv_corpus(folder, transcripts: bool = True, attributes: bool = False) -> str:
    """``<folder>/mycorpus/list.csv`` listing 6 files of 4 speakers (one file in ``<folder>/elsewhere``);
    ``transcripts=False`` leaves out the transcript column, ``attributes=True`` adds arousal, valence and
    dominance columns (1-5). Returns the CSV path."""
    corpus = os.path.join(folder, "mycorpus")
    for name in ("a1", "a2", "b1", "c1", "c2"):
        write_wav(os.path.join(corpus, "audio", f"{name}.wav"), 0.2 if name == "c2" else 0.1)
    elsewhere = os.path.join(folder, "elsewhere", "d1.flac")
    write_wav(elsewhere, 0.3)
    rows = [("path", "speaker", "label", "transcript", "group"),
            ("audio/a1.wav", "alice", "happy", "hello there", "s1"),
            ("audio/a2.wav", "alice", "sad", "", "s1"),
            ("audio/b1.wav", "bob", "happy", "good morning", ""),
            ("audio/c1.wav", "carol", "angry", "", "s2"),
            ("audio/c2.wav", "carol", "neutral", "fine", "s2"),
            (elsewhere, "dave", "sad", "far away", "s3")]
    if not transcripts:
        rows = [r[:3] + r[4:] for r in rows]
    if attributes:
        rows = [rows[0] + ("arousal", "valence", "dominance")] + [
            r + (f"{1.5 + 0.5 * i:g}", f"{4.5 - 0.5 * i:g}", f"{2 + 0.25 * i:g}") for i, r in enumerate(rows[1:])]
    path = os.path.join(corpus, "list.csv")
    with open(path, "w") as f:
        f.write("".join(",".join(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------------------
# IEMOCAP: Session{n}/dialog/{EmoEvaluation,transcriptions}/<dialog>.txt and sentences/wav/<dialog>/,
# with the release's quirks (turns out of time order, an unlabelled MXX0 line, a line without time
# stamp, a Categorical/ subfolder, a missing wav)

IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
N, H, A, S, F, X = ["Neutral"], ["Happiness"], ["Anger"], ["Sadness"], ["Frustration"], ["Excited"]


def iemocap_block(utt, start, end, label, votes, vad=(2.5, 2.5, 2.5), self_vote=None):
    lines = [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]"]
    for i, words in enumerate(votes, 1):
        lines.append(f"C-E{i}:\t{' '.join(w + ';' for w in words)}\t(comment; with semicolon)")
    if self_vote:
        lines.append(f"C-{utt[-4]}1:\t{self_vote};\t()")
    lines.append("A-E1:\tval 3; act 2; dom  2;\t()")
    return "\n".join(lines) + "\n\n"


def write_iemocap_dialog(root, session, dialog, turns, order=None, skip_wav=()):
    """turns: (suffix, start, end, label, votes, transcript). Writes EmoEvaluation, transcription, wavs."""
    base = os.path.join(root, f"Session{session}")
    emo = os.path.join(base, "dialog", "EmoEvaluation")
    trans = os.path.join(base, "dialog", "transcriptions")
    wav_dir = os.path.join(base, "sentences", "wav", dialog)
    for d in (emo, trans, wav_dir):
        os.makedirs(d, exist_ok=True)
    order = order or range(len(turns))
    with open(os.path.join(emo, f"{dialog}.txt"), "w") as f:
        f.write(IEMOCAP_HEADER + "".join(iemocap_block(f"{dialog}_{turns[i][0]}", *turns[i][1:5]) for i in order))
    lines = [f"{dialog}_{turns[i][0]} [{turns[i][1]:08.4f}-{turns[i][2]:08.4f}]: {turns[i][5]}" for i in order]
    lines.insert(1, f"{dialog}_MXX0 [000.1000-000.2000]: Mm.")
    lines.append(f"{dialog}_F999: no time stamp")
    with open(os.path.join(trans, f"{dialog}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for suffix, start, end, *_ in turns:
        if suffix in skip_wav:
            continue
        n = int(round((end - start) * 16000))
        sf.write(os.path.join(wav_dir, f"{dialog}_{suffix}.wav"), np.full(n, 0.1, dtype=np.float32), 16000,
                 subtype="PCM_16")


def write_iemocap(root) -> str:
    # Session 1, improvised: each vote pattern of the two protocols once.
    write_iemocap_dialog(root, 1, "Ses01F_impro01", [
        ("F000", 1.0, 2.0, "neu", [N, N, N], "Excuse me."),
        ("M000", 2.5, 3.5, "exc", [X, X, H], "[LAUGHTER] Do you have your forms?"),
        ("F001", 4.0, 5.0, "xxx", [A, F, S], "Yeah."),  # three different labels
        ("M001", 5.5, 6.5, "xxx", [F + A, A, N], "Let me see them."),  # two agree but three labels
        ("F002", 7.0, 8.0, "fru", [F, F, A], "Is there a problem?"),  # agreed, not a target class
        ("M002", 8.5, 9.5, "xxx", [S, S, N], "Who told you to get in this line?"),  # votes agree on sad
        ("F003", 10.0, 11.0, "ang", [A, A, A], "You did."),
        ("M003", 11.5, 12.5, "sad", [S, S, S], "Okay."),
    ])
    # Session 1, scripted: a female monologue longer than the context window, then the male actor.
    mono = [(f"F{i:03d}", 1.0 + i, 1.8 + i, "neu", [N, N, N], f"line {i}") for i in range(10)]
    write_iemocap_dialog(root, 1, "Ses01M_script01_1", mono + [
        ("M000", 0.0, 0.5, "hap", [H, H, N], "Hi."),  # earliest turn, written last
        ("M001", 11.5, 12.0, "ang", [A, A, F], "Stop."),
    ])
    categorical = os.path.join(root, "Session1", "dialog", "EmoEvaluation", "Categorical")
    os.makedirs(categorical)
    with open(os.path.join(categorical, "Ses01F_impro01_e1_cat.txt"), "w") as f:
        f.write("x\n")
    # Session 2: files written out of time order (the Session 2 quirk); one wav is missing.
    write_iemocap_dialog(root, 2, "Ses02F_impro01", [
        ("F000", 1.0, 2.0, "neu", [N, N, H], "One."),
        ("F001", 5.0, 6.0, "sad", [S, S, S], "Three."),
        ("M000", 3.0, 4.0, "ang", [A, A, A], "Two."),
        ("M001", 7.0, 8.0, "exc", [X, X, X], "Four."),
        ("M002", 9.0, 10.0, "hap", [H, H, H], "Five."),
    ], skip_wav=("M002",))
    return root
