#!/usr/bin/env python3
"""MSP-Podcast (Lotfian & Busso 2019; the corpus of the Odyssey 2024 emotion challenge): categorical classes
and arousal / valence / dominance of every speaking turn, with the release's official splits.

The release as distributed: ``Audios/<FileName>`` (16 kHz wav) and ``Labels/labels_consensus.csv`` with one
row per turn: ``FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set``. ``EmoClass`` is the
consensus of the raters' primary emotions (A angry, S sad, H happy, U surprise, F fear, D disgust, C contempt,
N neutral; O other and X no agreement); ``EmoAct``, ``EmoVal``, ``EmoDom`` are the mean ratings on 1-7
(arousal, valence, dominance: 1 calm / negative / weak). ``Split_Set`` is ``Train``, ``Development``,
``Test1``, ``Test2`` (later releases add ``Test3``, whose labels are withheld: left out here).
Speakers the release lists as ``Unknown`` get an ID of their own per turn (``Unknown_<FileName>``): nothing
says two such turns share a speaker, and one ``Unknown`` speaker would join hundreds of turns in a fold.

Protocols: ``full`` (the challenge's 8 classes as ang, sad, hap, sur, fea, dis, con, neu; O and X left out),
``iemocap4`` (A, H, S, N), ``attributes`` (every turn with its three ratings; class = the raw EmoClass code including O and X,
for dimensional variants: ``task: dimensional``). Fold schemes of each: ``official`` (one fold per test
set: train on Train, validate on Development, test on Test1, and another on Test2) and ``lkso``
(leave-k-speakers-out over Train + Development + Test speakers, 5 folds by default).

Usage: ``python local/prepare_msp_podcast.py --root MSP-PODCAST --out data/emotion``
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speaker_fold_common import probe_duration, speaker_fold_main  # noqa: E402

from ser_modules.data.corpus import apply_label_map, write_emotion_protocol, write_summary  # noqa: E402
from ser_modules.data.folds import Fold, leave_k_speakers_out  # noqa: E402
from ser_modules.utils.fileio import ManifestError, run_main  # noqa: E402

logger = logging.getLogger("prepare_msp_podcast")

LABELS = os.path.join("Labels", "labels_consensus.csv")
COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
CLASS_NAMES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt",
               "N": "neutral", "O": "other", "X": "no agreement"}
# The challenge's 8 classes under IEMOCAP-style short names; the four IEMOCAP classes among them.
CHALLENGE_CLASSES = {"A": "ang", "S": "sad", "H": "hap", "U": "sur", "F": "fea", "D": "dis", "C": "con", "N": "neu"}
IEMOCAP4 = {"A": "ang", "H": "hap", "S": "sad", "N": "neu"}
SPLITS = {"Train": "train", "Development": "valid", "Test1": "test1", "Test2": "test2"}
WITHHELD_SPLITS = ("Test3",)
DEFAULT_FOLDS = 5


def read_labels(root: str) -> pd.DataFrame:
    """``labels_consensus.csv`` of the release, checked: the columns, a class, split and three numbers per
    row, every listed audio file present (:class:`ManifestError` naming the CSV line and the problem)."""
    path = os.path.join(root, LABELS)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: not found (is {root} an MSP-Podcast release with Labels/ and Audios/?)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    table = table[list(COLUMNS)].apply(lambda column: column.str.strip())
    withheld = table["Split_Set"].isin(WITHHELD_SPLITS)
    if withheld.any():
        logger.info("%s: %d turns of %s left out (their labels are withheld)", path, int(withheld.sum()),
                    ", ".join(sorted(table.loc[withheld, "Split_Set"].unique())))
    rows = []
    for line, record in enumerate(table.to_dict("records"), 2):
        if record["Split_Set"] in WITHHELD_SPLITS:
            continue
        if record["Split_Set"] not in SPLITS:
            raise ManifestError(f"{path}:{line}: Split_Set {record['Split_Set']!r} is not one of {list(SPLITS)}")
        if record["EmoClass"] not in CLASS_NAMES:
            raise ManifestError(f"{path}:{line}: EmoClass {record['EmoClass']!r} is not one of {list(CLASS_NAMES)}")
        values = {}
        for column, attribute in (("EmoAct", "arousal"), ("EmoVal", "valence"), ("EmoDom", "dominance")):
            try:
                values[attribute] = float(record[column])
            except ValueError:
                raise ManifestError(f"{path}:{line}: {column} {record[column]!r} is not a number") from None
            if not np.isfinite(values[attribute]):
                raise ManifestError(f"{path}:{line}: {column} {record[column]!r} is not a finite number")
        audio = os.path.join(root, "Audios", record["FileName"])
        if not os.path.isfile(audio):
            raise ManifestError(f"{path}:{line}: {audio}: audio file not found")
        speaker = record["SpkrID"]
        if not speaker or speaker.lower() == "unknown":
            speaker = f"Unknown_{os.path.splitext(record['FileName'])[0]}"
        gender = {"female": "F", "male": "M", "f": "F", "m": "M"}.get(record["Gender"].lower(), "")
        rows.append({"ID": os.path.splitext(record["FileName"])[0], "wav": os.path.abspath(audio),
                     "duration": probe_duration(audio), "speaker": f"msp{speaker}", "gender": gender,
                     "label": record["EmoClass"], "split": SPLITS[record["Split_Set"]], "language": "en", **values})
    if not rows:
        raise ManifestError(f"{path}: no labelled turns")
    frame = pd.DataFrame(rows)
    if frame["ID"].duplicated().any():
        raise ManifestError(f"{path}: FileName {frame.loc[frame['ID'].duplicated(), 'ID'].iloc[0]!r} is listed twice")
    logger.info("%s: %d turns, %d speakers, splits %s", path, len(frame), frame["speaker"].nunique(),
                frame["split"].value_counts().sort_index().to_dict())
    return frame


def official_folds(frame: pd.DataFrame) -> list[Fold]:
    """One fold per labelled test set: training on Train, validation on Development, test on Test1 (Test2)."""
    def ids(split):
        return frame.loc[frame["split"] == split, "ID"].tolist()

    def speakers(split):
        return sorted(frame.loc[frame["split"] == split, "speaker"].unique())

    if not ids("train") or not ids("valid"):
        raise ManifestError("MSP-Podcast: the official splits need Train and Development turns; "
                            f"found {frame['split'].value_counts().to_dict()}")
    return [Fold(name=test, test_speakers=speakers(test), valid_speakers=speakers("valid"), train=ids("train"),
                 valid=ids("valid"), test=ids(test)) for test in ("test1", "test2") if ids(test)]


def prepare_msp_podcast(root: str, out: str, label_map: dict[str, str] | None = None, k: int | None = None,
                        protocol: str = "full", screen=None) -> dict:
    """Write ``<out>/{full,iemocap4,attributes}/manifest.csv`` with ``folds_official.json`` and
    ``folds_lkso.json`` each, and ``summary.json`` (``label_map``: the classes of ``protocol`` instead of the
    challenge's 8)."""
    frame = read_labels(root)
    if screen is not None:
        frame = screen(frame, "msp-podcast")
    frame = frame.assign(session=frame["split"])
    protocol = "full" if protocol == "default" else protocol  # (the speaker-fold command line's default name)
    maps = {"full": CHALLENGE_CLASSES, "iemocap4": IEMOCAP4, "attributes": None}
    if protocol not in maps or label_map:
        maps[protocol] = label_map
    summary = {"corpus": "msp-podcast", "speakers": int(frame["speaker"].nunique()), "language": "en", "protocols": {}}
    for name, mapping in maps.items():
        mapped = apply_label_map(frame, mapping, corpus="msp-podcast")
        n_speakers = mapped["speaker"].nunique()
        fold_k = k or max(1, -(-n_speakers // DEFAULT_FOLDS))  # ceil: DEFAULT_FOLDS folds
        genders = dict(zip(mapped["speaker"], mapped["gender"])) if (mapped["gender"] != "").all() else None
        folds = {"official": official_folds(mapped), "lkso": leave_k_speakers_out(mapped, fold_k, genders)}
        write_emotion_protocol(out, name, mapped, folds)
        summary["protocols"][name] = {"utterances": len(mapped),
                                      "classes": mapped["emotion"].value_counts().sort_index().to_dict(),
                                      "fold_schemes": sorted(folds), "k": fold_k, "folds": len(folds["lkso"]),
                                      "label_map": mapping}
    summary["utterances"] = summary["protocols"][protocol]["utterances"]
    write_summary(os.path.join(out, "summary.json"), summary)
    return summary


def main(argv=None) -> None:
    speaker_fold_main(argv, prepare_msp_podcast, __doc__.split("\n\n")[0], DEFAULT_FOLDS,
                      "the release folder (Audios/, Labels/labels_consensus.csv)")


if __name__ == "__main__":
    run_main(main, "prepare_msp_podcast")
