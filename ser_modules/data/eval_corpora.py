"""Evaluation corpora of cross-corpus evaluation: where stage 1 writes them and how their labels
meet the training classes.

Stage 1 (``local/prepare_eval.py``) writes each evaluation corpus to ``<data>/eval/<name>/manifest.csv``
with its labels mapped onto the training classes (:func:`map_onto_training_classes`) and lists the
corpora of the run in ``<data>/eval/corpora.json`` (:func:`write_eval_list`), which stages 4-6 read
(:func:`listed_eval_corpora`). Stage 4 dumps each into ``dump/stores_eval-<name>.json``
(:func:`eval_protocol`); stage 5 scores every saved model on it (:mod:`ser_modules.ser.cross_corpus`)
and stage 6 tabulates the scores (:mod:`ser_modules.report.cross_corpus`).

An evaluation corpus may lack a training class (its label map leaves it empty): its UA is then the mean
recall over the classes it has, and macro F1 is taken over those classes too; the report says which.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import pandas as pd

from ser_modules.utils.fileio import ManifestError, read_json, read_manifest, write_json

logger = logging.getLogger(__name__)


EVAL_KINDS = ("demo-other", "iemocap", "ravdess", "crema-d", "emodb", "csv")


EVAL_FOLDER = "eval"


def eval_dir(data_dir: str, name: str) -> str:
    """Where stage 1 writes evaluation corpus ``name``."""
    return os.path.join(data_dir, EVAL_FOLDER, name)


def eval_protocol(name: str) -> str:
    """The protocol name of an evaluation corpus in stage 4's ``stores_<protocol>.json``."""
    return f"eval-{name}"


def eval_names(kinds: list[str]) -> list[str]:
    """Names of the evaluation corpora: the kind, with ``-2``, ``-3``, ... for a kind given again."""
    seen: Counter = Counter()
    names = []
    for kind in kinds:
        seen[kind] += 1
        names.append(kind if seen[kind] == 1 else f"{kind}-{seen[kind]}")
    return names


def write_eval_list(data_dir: str, names: list[str]) -> None:
    """Record the evaluation corpora of this run (stages 4-6 read the list)."""
    write_json(os.path.join(data_dir, EVAL_FOLDER, "corpora.json"), {"corpora": list(names)})


def listed_eval_corpora(data_dir: str) -> list[dict]:
    """The summaries of the evaluation corpora stage 1 prepared for this run (none without the list)."""
    path = os.path.join(data_dir, EVAL_FOLDER, "corpora.json")
    if not os.path.isfile(path):
        return []
    summaries = []
    for name in read_json(path)["corpora"]:
        summary = os.path.join(eval_dir(data_dir, name), "summary.json")
        if not os.path.isfile(summary):
            raise ManifestError(f"{summary}: evaluation corpus {name} is listed in {path} but not prepared (rerun stage 1)")
        summaries.append(read_json(summary))
    return summaries


def map_onto_training_classes(frame: pd.DataFrame, column: str, mapping: dict[str, str] | None, classes: list[str],
                              corpus: str, default_names: bool = False) -> tuple[pd.DataFrame, dict]:
    """Set ``emotion`` of an evaluation corpus from its ``column`` through ``mapping`` onto the training
    ``classes``; returns the kept rows and ``{"dropped": {label: n}, "classes": {class: n},
    "missing_classes": [...]}``.

    ``mapping`` (a label matches in any letter case) is the user's: a target that is not a training
    class is a :class:`ManifestError` naming it. Without one, a label equal to a training class keeps
    it, and with ``default_names`` (RAVDESS, CREMA-D, EmoDB) the named emotions of ``iemocap4``
    (``anger`` -> ``ang``, ...) map onto the training classes that are among them. Labels the map does not
    reach are dropped and counted; no utterance left is an error; a training class left without
    utterances is reported in ``missing_classes``, not an error."""
    from ser_modules.data.corpus import LABEL_MAPS

    labels = frame[column].astype(str)
    found = sorted(labels.unique())
    if mapping is not None:
        foreign = sorted({v for v in mapping.values()} - set(classes))
        if foreign:
            raise ManifestError(f"{corpus}: the label map sends labels to {foreign}, which the training corpus lacks "
                                f"(its classes: {classes})")
    else:
        mapping = {k: v for k, v in LABEL_MAPS["iemocap4"].items() if v in classes} if default_names else {}
        mapping.update({c: c for c in classes})
    lower = {k.lower(): v for k, v in mapping.items()}
    target = [mapping.get(label, lower.get(label.lower())) for label in labels]
    frame = frame.assign(source_label=labels.to_numpy(), emotion=target)
    dropped = frame["emotion"].isna()
    counts = Counter(frame.loc[dropped, "source_label"])
    frame = frame[~dropped].reset_index(drop=True)
    if frame.empty:
        raise ManifestError(f"{corpus}: no label maps onto the training classes {classes} (labels in the corpus: "
                            f"{found}); give --eval-label-map")
    if counts:
        logger.info("%s: %d utterances dropped, labels without a training class: %s", corpus, sum(counts.values()),
                    dict(sorted(counts.items())))
    present = frame["emotion"].value_counts()
    missing = [c for c in classes if c not in present.index]
    if missing:
        logger.warning("%s: training class(es) %s have no utterance here; its UA and F1 are over %s", corpus, missing,
                       sorted(present.index))
    return frame, {"dropped": {k: int(v) for k, v in sorted(counts.items())},
                   "classes": {c: int(present.get(c, 0)) for c in classes}, "missing_classes": missing}


def eval_manifest(data_dir: str, name: str) -> pd.DataFrame:
    return read_manifest(os.path.join(eval_dir(data_dir, name), "manifest.csv"), ("ID", "emotion"))
