#!/usr/bin/env python3
"""RAVDESS preparer: the speech audio files, one protocol with leave-k-speakers-out folds.

Layout as distributed (``Audio_Speech_Actors_01-24.zip``; the song and video archives may be
extracted beside it): ``<root>/[...]/Actor_XX/MM-CC-EE-II-SS-RR-AA.wav`` with modality ``MM``
(03 audio only), vocal channel ``CC`` (01 speech, 02 song), emotion ``EE`` (01 neutral, 02 calm,
03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity ``II`` (01 normal,
02 strong), statement ``SS`` (01 "Kids are talking by the door", 02 "Dogs are sitting by the
door"), repetition ``RR`` and actor ``AA`` (01-24; odd male, even female). 48 kHz, a few files
stereo; audio is converted to 16 kHz mono where it is read (``ser_modules.data.audio.load_audio``).

Only speech audio (modality 03, channel 01) is kept: 1440 files, 24 actors. Default ``k = 2``:
12 folds, each testing one female and one male actor (speakers are gender-interleaved).

Usage: ``python local/prepare_ravdess.py --root /data/RAVDESS --out data/emotion [--label-map iemocap4]``
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import Counter

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speaker_fold_common import iter_files, log_counts, probe_duration, speaker_fold_main  # noqa: E402

from ser_modules.data.corpus import write_speaker_fold_corpus  # noqa: E402
from ser_modules.utils.fileio import ManifestError, run_main  # noqa: E402

logger = logging.getLogger("prepare_ravdess")

DEFAULT_K = 2
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_FILE_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$", re.IGNORECASE)
_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")


def actor_folders(root: str) -> list[str]:
    """Every ``Actor_XX`` folder under ``root`` (at any depth), macOS ``__MACOSX`` copies left out."""
    if not os.path.isdir(root):
        raise ManifestError(f"{root}: RAVDESS root folder not found")
    found = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__MACOSX" and not d.startswith("."))
        if _ACTOR_DIR.match(os.path.basename(folder)):
            found.append(folder)
    if not found:
        raise ManifestError(f"{root}: no Actor_XX folders; is this the extracted RAVDESS audio archive?")
    return found


def parse_file_name(path: str) -> dict | None:
    """The codes of a RAVDESS file name, or None when the name does not follow the pattern.

    Raises :class:`ManifestError` naming the file for a code outside the documented ones.
    """
    m = _FILE_NAME.match(os.path.basename(path))
    if not m:
        return None
    modality, channel, emotion, intensity, statement, _, actor = m.groups()
    fields = {"modality": modality, "channel": channel, "actor": actor}
    if modality != "03" or channel != "01":
        return fields  # song or video files: valid names, not speech audio
    for code, table, what in ((emotion, EMOTIONS, "emotion"), (intensity, INTENSITIES, "intensity"),
                              (statement, STATEMENTS, "statement")):
        if code not in table:
            raise ManifestError(f"{path}: unknown {what} code {code!r} (known: {sorted(table)})")
    fields.update(label=EMOTIONS[emotion], intensity=INTENSITIES[intensity], transcript=STATEMENTS[statement])
    return fields


def read_ravdess(root: str) -> pd.DataFrame:
    """All speech-audio utterances under ``root``: ``ID, wav, duration, speaker, gender, label,
    transcript, intensity``. Misnamed files are warned about and skipped; song and video files are
    left out (both counted in the log)."""
    rows, skipped, seen = [], Counter(), {}
    for folder in actor_folders(root):
        folder_actor = _ACTOR_DIR.match(os.path.basename(folder)).group(1)
        for name in iter_files(folder):
            path = os.path.join(folder, name)
            fields = parse_file_name(path)
            if fields is None:
                logger.warning("%s: not a RAVDESS file name (MM-CC-EE-II-SS-RR-AA.wav); skipped", path)
                skipped["misnamed"] += 1
                continue
            if "label" not in fields:
                skipped["song or video (not speech audio)"] += 1
                continue
            if fields["actor"] != folder_actor:
                # the folder and the name disagree on the speaker: the speaker folds would be wrong
                raise ManifestError(f"{path}: actor {fields['actor']} in the file name but folder Actor_{folder_actor}")
            if name in seen:  # the archive extracted twice: every utterance would count double
                raise ManifestError(f"{path}: the same file as {seen[name]}; extract the archive only once")
            seen[name] = path
            duration = probe_duration(path)
            actor = int(fields["actor"])
            rows.append({"ID": f"ravdess-{name[:-4]}", "wav": os.path.abspath(path), "duration": duration,
                         "speaker": f"ravdess-{fields['actor']}", "gender": "M" if actor % 2 else "F",
                         "label": fields["label"], "transcript": fields["transcript"],
                         "intensity": fields["intensity"]})
    log_counts("ravdess", len(rows), skipped)
    if not rows:
        raise ManifestError(f"{root}: no RAVDESS speech audio files (03-01-*.wav) found")
    return pd.DataFrame(rows)


def prepare_ravdess(root: str, out: str, label_map: dict[str, str] | None = None, k: int | None = None,
                    protocol: str = "default", screen=None) -> dict:
    """Read RAVDESS and write ``<out>/<protocol>/manifest.csv``, ``folds_lkso.json`` and ``summary.json``."""
    return write_speaker_fold_corpus(read_ravdess(root), out, "ravdess", label_map, k, protocol, screen=screen, language="en",
                                     default_k=DEFAULT_K)


def main(argv=None) -> None:
    speaker_fold_main(argv, prepare_ravdess, __doc__.split("\n\n")[0], DEFAULT_K,
                      "RAVDESS folder holding the Actor_XX folders")


if __name__ == "__main__":
    run_main(main, "prepare_ravdess")
