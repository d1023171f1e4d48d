#!/usr/bin/env python3
"""IEMOCAP preparer: every labelled turn, three label protocols and two fold schemes.

Reads the release as distributed (``Session{1..5}/dialog/EmoEvaluation``, ``.../transcriptions``,
``Session{1..5}/sentences/wav``) and writes under ``--out``:

* ``turns.csv``: every labelled turn with its wav, duration, session, speaker, gender, dialog,
  dialog start/end time, turn order (by start time), transcript without special tokens, consensus
  label, evaluator votes, valence/arousal/dominance, and the previous turn of the same speaker
  and of the interlocutor (IAAN context: walk back at most 8 turns, any label).
* ``standard/`` (consensus in ang/hap/exc/neu/sad, exc merged into hap: 5531 on the full corpus),
  ``lakomkin2018/`` (vote rule that reproduces Lakomkin 2018's counts, see :func:`lakomkin_label`)
  and ``lakomkin2018_strict/`` (the paper's rule read literally, see :func:`lakomkin_strict_label`),
  each with ``manifest.csv``, ``folds_loso.json`` (leave one session out, 5 folds) and
  ``folds_lospk.json`` (leave one speaker out, 10 folds, validation = the test speaker's session
  partner).

On the full release the expected counts (NOTES.md section 1) are checked; on partial data the
preparer warns and goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections import Counter

import pandas as pd

from ser_modules.data.corpus import (
    EMOTION_COLUMNS,
    IEMOCAP_CLASSES,
    complete_columns,
    write_emotion_protocol,
    write_summary,
)
from ser_modules.data.dialog import UTTERANCE_ID as _UTT_ID
from ser_modules.data.dialog import add_context, parse_transcription_lines
from ser_modules.data.folds import leave_one_session_out, leave_one_speaker_out
from ser_modules.data.text import remove_special_tokens
from ser_modules.utils.audio_file import header_duration
from ser_modules.utils.fileio import ManifestError, run_main, setup_logging, write_csv

logger = logging.getLogger("prepare_iemocap")

WORD_TO_CODE = {
    "neutral": "neu", "frustration": "fru", "anger": "ang", "sadness": "sad", "happiness": "hap",
    "excited": "exc", "surprise": "sur", "fear": "fea", "disgust": "dis", "other": "oth",
}
STANDARD_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
FULL_CORPUS_TURNS = 10039
EXPECTED = {
    "standard_total": 5531,
    "standard_classes": {"ang": 1103, "hap": 1636, "neu": 1708, "sad": 1084},
    "standard_sessions": {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241},
    "all_labels": {"xxx": 2507, "fru": 1849, "neu": 1708, "hap+exc": 1636, "ang": 1103, "sad": 1084,
                   "sur": 107, "fea": 40, "oth": 3, "dis": 2},
}
LAKOMKIN_PAPER_COUNTS = {"total": 6416, "ang": 1104, "hap": 2496, "neu": 1752, "sad": 1064}
# lakomkin2018's tie-break among the tied top labels: this order reproduces the paper's class counts.
LAKOMKIN_TIE_ORDER = ["ang", "hap", "neu", "sad"]
# vote-rule protocol -> the turns.csv column holding its label ("" = turn dropped)
VOTE_PROTOCOLS = {"lakomkin2018": "lakomkin_label", "lakomkin2018_strict": "lakomkin_strict_label"}

_TURN_LINE = re.compile(r"^\[(\d+\.?\d*)\s*-\s*(\d+\.?\d*)\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
_VOTE_LINE = re.compile(r"^C-([EFM]\d+):\s*(.*)$")


def parse_emo_evaluation(path: str) -> list[dict]:
    """Parse one ``EmoEvaluation/<dialog>.txt`` into turns with consensus label, VAD and votes.

    ``votes`` lists, per evaluator (``E1``..``E6``; the actors' self-ratings ``F*``/``M*`` are kept
    apart in ``self_votes``), the label codes they gave (several are possible).
    """
    turns: list[dict] = []
    current = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if line.startswith("["):
                m = _TURN_LINE.match(line)
                if not m:
                    raise ManifestError(f"{path}:{n}: malformed turn line {line!r}")
                start, end, utt, label, vad = m.groups()
                try:
                    v, a, d = (float(x) for x in vad.split(","))
                except ValueError as err:
                    raise ManifestError(f"{path}:{n}: malformed [V, A, D] {vad!r}") from err
                current = {"ID": utt, "start": float(start), "end": float(end), "label": label,
                           "valence": v, "arousal": a, "dominance": d, "votes": [], "self_votes": []}
                turns.append(current)
                continue
            m = _VOTE_LINE.match(line)
            if m and current is not None:
                rater, rest = m.groups()
                words = rest.split("(")[0]  # the comment in parentheses is free text
                codes = []
                for w in words.split(";"):
                    w = w.strip().lower()
                    if w:
                        codes.append(WORD_TO_CODE.get(w, "oth"))
                (current["votes"] if rater.startswith("E") else current["self_votes"]).append((rater, codes))
    return turns


def parse_transcriptions(path: str) -> dict[str, str]:
    """``{utterance id: text}`` from a ``transcriptions/<dialog>.txt`` (see
    :func:`ser_modules.data.dialog.parse_transcription_lines`)."""
    return {utt: text for utt, (_, _, text) in parse_transcription_lines(path).items()}


def format_votes(votes: list) -> str:
    return ";".join(f"{rater}:{'+'.join(codes)}" for rater, codes in votes)


def merge_excited(code: str) -> str:
    """Excited counted as happiness, as in every 4-class IEMOCAP protocol."""
    return "hap" if code == "exc" else code


def lakomkin_label(votes: list, self_votes: list) -> str | None:
    """The ``lakomkin2018`` rule: Lakomkin 2018's "at least two annotators agree" read so that it
    reproduces the paper's counts. On the release's EmoEvaluation files it gives 6433 turns (ang 1105,
    hap 2497, neu 1754, sad 1077; the paper: 6416 = 1104, 2496, 1752, 1064).

    Every annotator casts one vote, the FIRST label of its line: the evaluators ``C-E*`` (``votes``)
    and the actor's self-rating ``C-F1``/``C-M1`` (``self_votes``); excited counts as happiness.
    A turn is kept when its top label has at least two votes; ties for the top are broken in the
    order ang > hap > neu > sad (:data:`LAKOMKIN_TIE_ORDER`); a top label outside the four classes
    (fru, sur, ...), alone or in a tie without any class, drops the turn. There is no filter on the
    number of different labels. Returns the class or None.
    """
    # one vote per annotator: the label it wrote first (a line without a label casts none)
    support = Counter(merge_excited(codes[0]) for _, codes in votes + self_votes if codes)
    top = max(support.values(), default=0)
    if top < 2:
        return None
    tied = {label for label, n in support.items() if n == top}
    return next((c for c in LAKOMKIN_TIE_ORDER if c in tied), None)


def lakomkin_strict_label(votes: list) -> str | None:
    """The ``lakomkin2018_strict`` rule: Lakomkin 2018's sentence read literally, on the evaluators'
    ``C-E*`` votes only (the preparer's ``lakomkin2018`` rule until it was replaced by
    :func:`lakomkin_label`). Every label of each evaluator counts (excited as happiness); a turn is
    kept when one label has the support of at least two evaluators, is the only label with the top
    support (ties dropped) and is neutral/angry/happy/sad; a turn whose evaluators gave three or
    more different labels is dropped. On the release's EmoEvaluation files it gives 6136 turns
    (ang 1045, hap 2414, neu 1673, sad 1004; the paper: 6416). Returns the class or None.
    """
    support: Counter = Counter()
    distinct = set()
    for _, codes in votes:
        merged = {merge_excited(c) for c in codes}
        support.update(merged)
        distinct |= merged
    if not support or len(distinct) >= 3:
        return None
    (top, n), *rest = support.most_common()
    if n < 2 or (rest and rest[0][1] == n):
        return None
    return top if top in IEMOCAP_CLASSES else None


def read_corpus(root: str, screen=None) -> pd.DataFrame:
    """All labelled turns of the release under ``root`` whose wav file exists (and whose audio
    ``screen``, stage 1's :class:`~ser_modules.data.audio_screen.AudioScreen`, accepts: a rejected turn is
    left out before the dialog context is linked, so a context never points at it)."""
    sessions = sorted(d for d in os.listdir(root) if re.fullmatch(r"Session\d+", d)) if os.path.isdir(root) else []
    if not sessions:
        raise ManifestError(f"{root}: no Session1..Session5 folders; is this the IEMOCAP release folder?")
    rows, missing_wav, missing_text = [], 0, 0
    for session in sessions:
        emo_dir = os.path.join(root, session, "dialog", "EmoEvaluation")
        trans_dir = os.path.join(root, session, "dialog", "transcriptions")
        if not os.path.isdir(emo_dir):
            logger.warning("%s: no EmoEvaluation folder, session skipped", emo_dir)
            continue
        for name in sorted(os.listdir(emo_dir)):
            path = os.path.join(emo_dir, name)
            if not name.endswith(".txt") or not os.path.isfile(path) or name.startswith("."):
                continue  # Categorical/, Attribute/, Self-evaluation/ hold per-evaluator files
            dialog = name[:-4]
            trans_path = os.path.join(trans_dir, name)
            texts = parse_transcriptions(trans_path) if os.path.isfile(trans_path) else {}
            for turn in parse_emo_evaluation(path):
                m = _UTT_ID.match(turn["ID"])
                if not m or m.group(1) != dialog:
                    raise ManifestError(f"{path}: turn id {turn['ID']!r} does not belong to dialog {dialog!r}")
                wav = os.path.join(root, session, "sentences", "wav", dialog, turn["ID"] + ".wav")
                if not os.path.isfile(wav):
                    missing_wav += 1
                    continue
                if turn["ID"] not in texts:
                    missing_text += 1
                sess, gender = int(m.group(2)), m.group(3)
                rows.append({
                    "ID": turn["ID"], "wav": os.path.abspath(wav), "duration": header_duration(wav),
                    "session": sess, "speaker": f"Ses{sess:02d}_{gender}", "gender": gender, "dialog": dialog,
                    "start": turn["start"], "end": turn["end"], "label": turn["label"],
                    "transcript": remove_special_tokens(texts.get(turn["ID"], "")),
                    "votes": format_votes(turn["votes"]),
                    "lakomkin_label": lakomkin_label(turn["votes"], turn["self_votes"]) or "",
                    "lakomkin_strict_label": lakomkin_strict_label(turn["votes"]) or "",
                    "valence": turn["valence"], "arousal": turn["arousal"], "dominance": turn["dominance"],
                })
    if missing_wav:
        logger.warning("%d labelled turns have no wav file and were skipped", missing_wav)
    if missing_text:
        logger.warning("%d turns have no transcription line (transcript left empty)", missing_text)
    if not rows:
        raise ManifestError(f"{root}: no labelled turns with audio found")
    frame = pd.DataFrame(rows)
    if screen is not None:
        frame = screen(frame, "iemocap")
        if frame.empty:
            raise ManifestError(f"{root}: the audio of every labelled turn was rejected (see rejected.csv)")
    return add_context(frame)


def check_expected_counts(turns: pd.DataFrame, standard: pd.DataFrame, strict: bool, rejected: int = 0) -> None:
    """Compare with the published counts on the full release; warn (partial data) or raise. With
    ``rejected`` turns left out by stage 1's audio check, the counts cannot match: say so, not "partial"."""
    if rejected and len(turns) + rejected == FULL_CORPUS_TURNS:
        logger.warning("full IEMOCAP, but %d turn(s) rejected by the audio check (rejected.csv): the published "
                       "counts are not compared", rejected)
        return
    if len(turns) != FULL_CORPUS_TURNS:
        logger.warning("partial IEMOCAP (%d labelled turns of %d): expected counts not checked",
                       len(turns), FULL_CORPUS_TURNS)
        return
    found = {
        "standard_total": len(standard),
        "standard_classes": standard["emotion"].value_counts().to_dict(),
        "standard_sessions": standard["session"].value_counts().to_dict(),
    }
    labels = turns["label"].replace({"hap": "hap+exc", "exc": "hap+exc"}).value_counts().to_dict()
    found["all_labels"] = {k: labels.get(k, 0) for k in EXPECTED["all_labels"]}
    bad = {k: (found[k], v) for k, v in EXPECTED.items() if found[k] != v}
    if bad:
        message = "IEMOCAP counts differ from the published ones: " + "; ".join(f"{k}: found {f}, expected {e}" for k, (f, e) in bad.items())
        if strict:
            raise ManifestError(message + " (pass --no-strict-counts to continue anyway)")
        logger.warning(message)
    else:
        logger.info("full IEMOCAP: all expected counts match (standard protocol: %d utterances)", len(standard))


def vote_protocol(turns: pd.DataFrame, column: str) -> pd.DataFrame:
    """The turns a vote rule keeps, its label (``column`` of ``turns``) as ``emotion``."""
    kept = turns[turns[column] != ""].copy()
    kept["emotion"] = kept[column]
    return kept


def log_against_paper(name: str, protocol: pd.DataFrame) -> None:
    """One line comparing a vote rule's counts with those Lakomkin 2018 reports."""
    paper = LAKOMKIN_PAPER_COUNTS
    logger.info("%s vote rule: %d utterances %s (paper: %d %s)", name, len(protocol),
                protocol["emotion"].value_counts().to_dict(), paper["total"],
                {k: v for k, v in paper.items() if k != "total"})


def prepare_iemocap(root: str, out: str, valid_fraction: float = 0.1, seed: int = 0, strict_counts: bool = True,
                    screen=None) -> dict:
    """Prepare ``turns.csv`` and the three protocols with both fold schemes; return a summary.
    ``screen`` (stage 1's audio check) leaves out turns whose audio cannot be used."""
    turns = read_corpus(root, screen)
    write_csv(os.path.join(out, "turns.csv"), complete_columns(turns, EMOTION_COLUMNS))
    partner = {}
    for session, group in turns.groupby("session"):
        spk = sorted(group["speaker"].unique())
        if len(spk) == 2:
            partner[spk[0]], partner[spk[1]] = spk[1], spk[0]
        else:
            logger.warning("session %s has speakers %s: leave-one-speaker-out needs two", session, spk)

    standard = turns[turns["label"].isin(STANDARD_MAP)].copy()
    standard["emotion"] = standard["label"].map(STANDARD_MAP)
    protocols = {"standard": standard}
    protocols.update((name, vote_protocol(turns, column)) for name, column in VOTE_PROTOCOLS.items())
    check_expected_counts(turns, standard, strict_counts, screen.count("iemocap") if screen is not None else 0)
    for name in VOTE_PROTOCOLS:
        log_against_paper(name, protocols[name])

    summary = {"corpus": "iemocap", "root": os.path.abspath(root), "language": "en", "turns": len(turns),
               "labels": turns["label"].value_counts().to_dict(), "protocols": {}}
    for name, frame in protocols.items():
        frame = frame.drop(columns=list(VOTE_PROTOCOLS.values())).reset_index(drop=True)
        folds = {"loso": leave_one_session_out(frame, valid_fraction, seed)}
        if all(s in partner for s in frame["speaker"].unique()):
            folds["lospk"] = leave_one_speaker_out(frame, partner)
        write_emotion_protocol(out, name, frame, folds)
        summary["protocols"][name] = {
            "utterances": len(frame), "classes": frame["emotion"].value_counts().sort_index().to_dict(),
            "sessions": {int(k): int(v) for k, v in frame["session"].value_counts().sort_index().items()},
            "fold_schemes": sorted(folds),
        }
    for name in VOTE_PROTOCOLS:
        summary["protocols"][name]["paper_counts"] = LAKOMKIN_PAPER_COUNTS
    write_summary(os.path.join(out, "summary.json"), summary)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="IEMOCAP release folder holding Session1..Session5")
    parser.add_argument("--out", required=True, help="output folder for turns.csv and the protocols")
    parser.add_argument("--valid-fraction", type=float, default=0.1,
                        help="share of the training sessions held out for validation in leave-one-session-out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-strict-counts", action="store_true",
                        help="on the full release, warn instead of failing when counts differ from the published ones")
    parser.add_argument("--log", default=None, help="append the log to this file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    prepare_iemocap(args.root, args.out, args.valid_fraction, args.seed, not args.no_strict_counts)


if __name__ == "__main__":
    run_main(main, "prepare_iemocap")
