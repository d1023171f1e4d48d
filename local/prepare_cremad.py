#!/usr/bin/env python3
"""CREMA-D preparer: the audio-only files, one protocol with leave-k-speakers-out folds.

Layout as distributed (github.com/CheyneyComputerScience/CREMA-D): ``<root>/AudioWAV/<actor>_<sentence>
_<emotion>_<level>.wav`` with actor 1001-1091, one of 12 sentence codes (``DFA`` = "Don't forget a
jacket", ...), emotion ``ANG DIS FEA HAP NEU SAD`` and level ``LO MD HI XX`` (XX: unspecified).
16 kHz mono. Genders are not in the file names: they are read from ``<root>/VideoDemographics.csv``
(columns ``ActorID``, ``Sex`` = Male/Female) when that file is present, else left empty.

Default ``k = 9``: the 91 actors make 10 folds (nine groups of 9 and one of 10, the lone 91st actor
joins the last group), i.e. the usual 10-fold speaker-independent cross-validation with ~740
utterances per test fold; with genders known each group mixes female and male actors.

Usage: ``python local/prepare_cremad.py --root /data/CREMA-D --out data/emotion [--label-map iemocap4]``
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

logger = logging.getLogger("prepare_cremad")

DEFAULT_K = 9
EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold", "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment", "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before", "TSI": "The surface is slick", "WSI": "We'll stop in a couple of minutes",
}
SEXES = {"Male": "M", "Female": "F"}
_FILE_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.(?i:wav)$")


def read_demographics(root: str) -> dict[str, str]:
    """``{actor id: "F" | "M"}`` from ``VideoDemographics.csv``; empty when the file is absent."""
    path = os.path.join(root, "VideoDemographics.csv")
    if not os.path.isfile(path):
        logger.info("%s not found: genders left empty (folds are not gender-interleaved)", path)
        return {}
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:
        raise ManifestError(f"{path}: cannot parse CSV ({err})") from err
    missing = [c for c in ("ActorID", "Sex") if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    genders = {}
    for line, (actor, sex) in enumerate(zip(table["ActorID"], table["Sex"]), 2):
        if sex.strip() not in SEXES:
            raise ManifestError(f"{path}:{line}: Sex {sex!r} of actor {actor} is not Male or Female")
        genders[actor.strip()] = SEXES[sex.strip()]
    return genders


def parse_file_name(path: str) -> dict | None:
    """Actor, label, level and sentence of a CREMA-D file name, or None when it does not follow the
    pattern. Raises :class:`ManifestError` naming the file for a code outside the documented ones."""
    m = _FILE_NAME.match(os.path.basename(path))
    if not m:
        return None
    actor, sentence, emotion, level = m.groups()
    for code, table, what in ((emotion, EMOTIONS, "emotion"), (sentence, SENTENCES, "sentence"),
                              (level, LEVELS, "level")):
        if code not in table:
            raise ManifestError(f"{path}: unknown {what} code {code!r} (known: {sorted(table)})")
    return {"actor": actor, "label": EMOTIONS[emotion], "transcript": SENTENCES[sentence], "intensity": LEVELS[level]}


def read_cremad(root: str) -> pd.DataFrame:
    """All utterances of ``<root>/AudioWAV``: ``ID, wav, duration, speaker, gender, label, transcript,
    intensity``. Misnamed files are warned about and skipped (counted in the log); unreadable ones are left
    to stage 1's audio check, which lists them in ``rejected.csv``."""
    folder = os.path.join(root, "AudioWAV")
    if not os.path.isdir(folder):
        raise ManifestError(f"{folder}: not found; --root must be the CREMA-D folder holding AudioWAV/")
    genders = read_demographics(root)
    rows, skipped, no_gender = [], Counter(), set()
    for name in iter_files(folder):
        path = os.path.join(folder, name)
        fields = parse_file_name(path)
        if fields is None:
            logger.warning("%s: not a CREMA-D file name (<actor>_<sentence>_<emotion>_<level>.wav); skipped", path)
            skipped["misnamed"] += 1
            continue
        duration = probe_duration(path)
        if genders and fields["actor"] not in genders:
            no_gender.add(fields["actor"])
        rows.append({"ID": f"cremad-{name[:-4]}", "wav": os.path.abspath(path), "duration": duration,
                     "speaker": f"cremad-{fields['actor']}", "gender": genders.get(fields["actor"], ""),
                     "label": fields["label"], "transcript": fields["transcript"], "intensity": fields["intensity"]})
    if no_gender:
        logger.warning("actors %s are not in VideoDemographics.csv: gender left empty", sorted(no_gender))
    log_counts("crema-d", len(rows), skipped)
    if not rows:
        raise ManifestError(f"{folder}: no CREMA-D audio files found")
    return pd.DataFrame(rows)


def prepare_cremad(root: str, out: str, label_map: dict[str, str] | None = None, k: int | None = None,
                   protocol: str = "default", screen=None) -> dict:
    """Read CREMA-D and write ``<out>/<protocol>/manifest.csv``, ``folds_lkso.json`` and ``summary.json``."""
    return write_speaker_fold_corpus(read_cremad(root), out, "crema-d", label_map, k, protocol, screen=screen, language="en",
                                     default_k=DEFAULT_K)


def main(argv=None) -> None:
    speaker_fold_main(argv, prepare_cremad, __doc__.split("\n\n")[0], DEFAULT_K,
                      "CREMA-D folder holding AudioWAV/ (and optionally VideoDemographics.csv)")


if __name__ == "__main__":
    run_main(main, "prepare_cremad")
