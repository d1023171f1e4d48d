#!/usr/bin/env python3
"""Generic emotion corpus from a CSV list: one protocol with leave-k-speakers-out folds.

The CSV has a header and the columns ``path`` (audio file; a relative path is relative to the
CSV's folder), ``speaker`` and ``label``, and optionally ``transcript`` (the words spoken; without
them stage 3 scores no WER and adapts no ASR model), ``language`` (a code such as ``en`` or ``de``;
empty: unknown), ``group`` (e.g. a recording session; becomes the manifest's ``session``, the
speaker where empty), ``gender``
(F/M, female/male or empty; when every speaker has one the folds are gender-interleaved),
``arousal``, ``valence``, ``dominance`` (numbers on the corpus's own scale, for dimensional variants; a
variant that predicts an attribute needs it on every row) and
``ID`` (default: the audio file name without extension, which must then be unique). Labels are
kept as written; map them with ``--label-map``. Any bad row is an error naming the CSV line.

Default ``k = 1``: leave one speaker out, which suits the few-speaker corpora such lists usually
hold; pass a larger ``--k`` for many speakers.

Usage: ``python local/prepare_csv.py --root corpus.csv --out data/emotion [--label-map a:x,b:y]``
"""

from __future__ import annotations

import logging
import math
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speaker_fold_common import probe_duration, speaker_fold_main  # noqa: E402

from ser_modules.data.corpus import write_speaker_fold_corpus  # noqa: E402
from ser_modules.utils.fileio import ManifestError, run_main  # noqa: E402

logger = logging.getLogger("prepare_csv")

DEFAULT_K = 1
REQUIRED = ("path", "speaker", "label")
GENDERS = {"": "", "f": "F", "female": "F", "m": "M", "male": "M"}
ATTRIBUTE_COLUMNS = ("arousal", "valence", "dominance")


def _duration(csv_path: str, line: int, audio: str) -> float:
    """Header duration of a listed file. A missing file is an error naming the CSV line (a wrong path);
    an unreadable one gets 0.0 and is left to stage 1's audio check, which lists it in ``rejected.csv``
    with its reason, as for every corpus kind."""
    if not os.path.isfile(audio):
        raise ManifestError(f"{csv_path}:{line}: {audio}: audio file not found")
    return probe_duration(audio)


def _row(csv_path: str, line: int, record: dict) -> dict:
    """One manifest row from one CSV record (``line`` is the CSV line number, header = 1)."""
    for column in REQUIRED:
        if not record[column]:
            raise ManifestError(f"{csv_path}:{line}: empty {column}")
    audio = record["path"]
    if not os.path.isabs(audio):
        audio = os.path.join(os.path.dirname(os.path.abspath(csv_path)), audio)
    gender = record.get("gender", "")
    if gender.lower() not in GENDERS:
        raise ManifestError(f"{csv_path}:{line}: gender {gender!r} is not F, M, female, male or empty")
    for attribute in ATTRIBUTE_COLUMNS:
        value = record.get(attribute, "")
        try:
            if value and not math.isfinite(float(value)):
                raise ValueError(value)
        except ValueError:
            raise ManifestError(f"{csv_path}:{line}: {attribute} {value!r} is not a number") from None
    return {"ID": record.get("ID") or os.path.splitext(os.path.basename(audio))[0],
            "wav": os.path.abspath(audio), "duration": _duration(csv_path, line, audio),
            "speaker": record["speaker"], "gender": GENDERS[gender.lower()], "label": record["label"],
            "transcript": record.get("transcript", ""), "language": record.get("language", ""),
            "session": record.get("group") or record["speaker"],
            **{a: record.get(a, "") for a in ATTRIBUTE_COLUMNS}}


def read_csv(root: str) -> pd.DataFrame:
    """The corpus listed in the CSV file ``root``: ``ID, wav, duration, speaker, gender, label,
    transcript, language, session``."""
    if not os.path.isfile(root):
        raise ManifestError(f"{root}: CSV file not found")
    try:
        table = pd.read_csv(root, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise ManifestError(f"{root}: cannot parse CSV ({err})") from err
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ManifestError(f"{root}: missing column(s) {missing}; found {list(table.columns)}")
    if table.empty:
        raise ManifestError(f"{root}: no rows")
    table = table.apply(lambda column: column.str.strip())
    rows = [_row(root, line, record) for line, record in enumerate(table.to_dict("records"), 2)]
    frame = pd.DataFrame(rows)
    if frame["ID"].duplicated().any():
        dup = frame.loc[frame["ID"].duplicated(), "ID"].iloc[0]
        raise ManifestError(f"{root}: duplicate utterance ID {dup!r} (file names repeat: add an ID column)")
    genders = frame[frame["gender"] != ""].groupby("speaker")["gender"].nunique()
    if (genders > 1).any():
        raise ManifestError(f"{root}: speaker {genders[genders > 1].index[0]!r} is listed with both genders")
    logger.info("%s: %d utterances, %d speakers", root, len(frame), frame["speaker"].nunique())
    return frame


def prepare_csv(root: str, out: str, label_map: dict[str, str] | None = None, k: int | None = None,
                protocol: str = "default", screen=None) -> dict:
    """Read the CSV ``root`` and write ``<out>/<protocol>/manifest.csv``, ``folds_lkso.json`` and ``summary.json``."""
    return write_speaker_fold_corpus(read_csv(root), out, "csv", label_map, k, protocol, screen=screen, default_k=DEFAULT_K)


def main(argv=None) -> None:
    speaker_fold_main(argv, prepare_csv, __doc__.split("\n\n")[0], DEFAULT_K,
                      "the CSV file (columns path, speaker, label[, transcript, language, group, gender, arousal, "
                      "valence, dominance, ID])")


if __name__ == "__main__":
    run_main(main, "prepare_csv")
