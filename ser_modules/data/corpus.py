"""Manifest conventions shared by every corpus preparer in ``local/``.

Emotion corpora are written as ``<data>/emotion/<protocol>/manifest.csv`` plus one
``folds_<scheme>.json`` per fold scheme; ASR corpora as ``<data>/asr/{train,dev,test}.csv``.
All audio paths are absolute. ``seg_start``/``seg_end`` (seconds) select a segment of a longer
file (TED-LIUM talks); they are empty when the whole file is the utterance.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from ser_modules.data.folds import Fold, check_speaker_independence, save_folds
from ser_modules.utils.fileio import ManifestError, read_json, write_csv, write_json

logger = logging.getLogger(__name__)

EMOTION_COLUMNS = [
    "ID", "wav", "seg_start", "seg_end", "duration", "speaker", "gender", "session", "emotion", "label",
    "transcript", "dialog", "turn_index", "start", "end", "votes", "valence", "arousal", "dominance",
    "prev_same", "prev_other",
]
ASR_COLUMNS = ["ID", "wav", "seg_start", "seg_end", "duration", "speaker", "corpus", "transcript"]
IEMOCAP_CLASSES = ["neu", "hap", "ang", "sad"]


def complete_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Return ``frame`` with ``columns`` first (missing ones empty) and any extra columns after."""
    frame = frame.copy()
    for c in columns:
        if c not in frame.columns:
            frame[c] = ""
    return frame[columns + [c for c in frame.columns if c not in columns]]


def write_emotion_protocol(data_dir: str, protocol: str, manifest: pd.DataFrame, folds: dict[str, list[Fold]]) -> str:
    """Write a protocol's manifest and fold files after checking speaker independence."""
    out = os.path.join(data_dir, protocol)
    manifest = complete_columns(manifest, EMOTION_COLUMNS)
    for scheme, fold_list in folds.items():
        check_speaker_independence(manifest, fold_list)
        save_folds(os.path.join(out, f"folds_{scheme}.json"), scheme, fold_list)
    write_csv(os.path.join(out, "manifest.csv"), manifest)
    counts = manifest["emotion"].value_counts().sort_index().to_dict()
    logger.info("protocol %s: %d utterances %s; fold schemes %s", protocol, len(manifest), counts, sorted(folds))
    return out


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """``"neutral:neu,calm:neu,happy:hap"`` or a JSON file ``{"neutral": "neu", ...}``; labels not
    in the map are dropped. ``None``/empty keeps all labels."""
    if not spec:
        return None
    if os.path.isfile(spec):
        mapping = read_json(spec)
        if not isinstance(mapping, dict):
            raise ManifestError(f"{spec}: a label map must be a JSON object of label -> class")
        return {str(k): str(v) for k, v in mapping.items()}
    mapping = {}
    for item in spec.split(","):
        if ":" not in item:
            raise ManifestError(f"label map item {item!r} is not of the form label:class")
        k, v = item.split(":", 1)
        mapping[k.strip()] = v.strip()
    return mapping


# RAVDESS / CREMA-D / EmoDB emotions, and corpora already labelled with IEMOCAP's short codes (excited
# joins happy, as in IEMOCAP's standard protocol), onto the four IEMOCAP classes.
LABEL_MAPS = {
    "iemocap4": {
        "neutral": "neu", "calm": "neu", "happy": "hap", "happiness": "hap", "sad": "sad", "sadness": "sad",
        "angry": "ang", "anger": "ang", "excited": "hap",
        "neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang",
    },
}


def resolve_label_map(spec: str | None) -> dict[str, str] | None:
    """A named map (``iemocap4``), an inline map or a JSON file; see :func:`parse_label_map`."""
    if spec in LABEL_MAPS:
        return dict(LABEL_MAPS[spec])
    return parse_label_map(spec)


def apply_label_map(frame: pd.DataFrame, mapping: dict[str, str] | None, column: str = "label",
                    corpus: str = "the corpus") -> pd.DataFrame:
    """Set ``emotion`` from ``column`` through ``mapping`` (a label matches in any letter case) and drop
    unmapped rows (logged). Fewer than 2 classes left is a :class:`ManifestError`; without a map, a
    label of a single utterance is kept with a warning naming it."""
    frame = frame.copy()
    found = sorted(frame[column].astype(str).unique())
    if mapping is None:
        frame["emotion"] = frame[column]
    else:
        lower = {k.lower(): v for k, v in mapping.items()}
        frame["emotion"] = [mapping.get(label, lower.get(str(label).lower())) for label in frame[column]]
        dropped = frame["emotion"].isna()
        if dropped.any():
            logger.info("label map drops %d utterances with labels %s", int(dropped.sum()),
                        sorted(frame.loc[dropped, column].unique()))
        frame = frame[~dropped].reset_index(drop=True)
    counts = frame["emotion"].value_counts()
    if len(counts) < 2:
        raise ManifestError(f"{corpus}: {len(counts)} class(es) {sorted(counts.index)} left after the label map "
                            f"{mapping}; emotion recognition needs at least 2 (labels in the corpus: {found})")
    single = sorted(counts[counts < 2].index)
    if mapping is None and single:
        logger.warning("%s: label(s) %s have a single utterance and become classes of their own; map or drop "
                       "them with --label-map", corpus, single)
    return frame


def drop_long_utterances(frame: pd.DataFrame, max_duration: float | None, name: str) -> pd.DataFrame:
    """Drop utterances longer than ``max_duration`` seconds, logging how many (DS2 drops > 15 s)."""
    if not max_duration or max_duration <= 0:
        return frame
    long = frame["duration"].astype(float) > max_duration
    if long.any():
        logger.info("%s: dropped %d of %d utterances longer than %.1f s (%.2f h)", name, int(long.sum()),
                    len(frame), max_duration, frame.loc[long, "duration"].astype(float).sum() / 3600)
    return frame[~long].reset_index(drop=True)


def write_asr_split(path: str, frame: pd.DataFrame) -> None:
    frame = complete_columns(frame, ASR_COLUMNS)
    write_csv(path, frame)
    logger.info("wrote %s: %d utterances, %.2f h", path, len(frame), frame["duration"].astype(float).sum() / 3600)


def write_summary(path: str, summary: dict) -> None:
    write_json(path, summary)


def fitted_k(speakers: int, k: int | None, default_k: int, corpus: str) -> int:
    """The k of leave-k-speakers-out: ``k`` when given, else the corpus default, made smaller when
    the corpus has too few speakers for 3 groups of it (training, validation and test need one each)."""
    if k is not None:
        return k
    fitted = max(1, min(default_k, speakers // 3))
    if fitted < default_k:
        logger.warning("%s: %d speakers make fewer than 3 groups of the default k=%d; using k=%d", corpus, speakers,
                       default_k, fitted)
    return fitted


def corpus_language(frame: pd.DataFrame) -> str:
    """The language code(s) of a manifest's ``language`` column, comma-separated; empty when unknown."""
    codes = sorted({c for c in frame.get("language", pd.Series(dtype=str)) if c})
    return ",".join(codes)


LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian"}


def language_mismatch(prepared: dict) -> str | None:
    """A sentence when the emotion corpus's language differs from the ASR's (``prepare_summary.json``), else None."""
    corpus, language = prepared.get("emotion_corpus"), prepared.get("emotion_language")
    asr = prepared.get("asr_language")
    if not language or not asr or language == asr:
        return None

    def name(code):
        return ", ".join(f"{LANGUAGE_NAMES.get(c, c)} ({c})" for c in code.split(","))

    return (f"the transcripts of {corpus} are {name(language)} while the ASR is {name(asr)}: WER on them measures "
            "the language mismatch, not the ASR")


def write_speaker_fold_corpus(frame: pd.DataFrame, out: str, corpus: str, label_map: dict[str, str] | None = None,
                              k: int | None = None, protocol: str = "default", language: str = "",
                              default_k: int = 1, screen=None) -> dict:
    """Shared tail of the RAVDESS / CREMA-D / EmoDB / generic-CSV preparers.

    ``frame`` holds ``ID, wav, duration, speaker, label`` (and optionally ``gender``, ``transcript``,
    ``session``, ``language``). ``screen`` (stage 1's :class:`~ser_modules.data.audio_screen.AudioScreen`)
    first leaves out unusable audio. Three protocols are written: ``protocol`` (the label map, or every
    label without one), ``full`` (every label of the corpus: RAVDESS's 8 classes, CREMA-D's 6, EmoDB's 7)
    and ``iemocap4`` (the four IEMOCAP classes, :data:`LABEL_MAPS`; left out when fewer than 2 of them
    occur). Folds are leave-``k``-speakers-out (scheme ``lkso``), gender-interleaved when genders are known,
    with ``k = None`` meaning ``default_k`` fitted to the number of speakers (:func:`fitted_k`).
    ``language`` (e.g. ``en``, ``de``) fills the ``language`` column where the frame has none.
    """
    from ser_modules.data.folds import leave_k_speakers_out

    if screen is not None:
        frame = screen(frame, corpus)
    frame = frame.copy()
    if "session" not in frame.columns or (frame["session"] == "").all():
        frame["session"] = frame["speaker"]
    if "language" not in frame.columns:
        frame["language"] = language
    genders = None
    if "gender" in frame.columns and (frame["gender"] != "").all():
        genders = dict(zip(frame["speaker"], frame["gender"]))
    summary = {"corpus": corpus, "utterances": 0, "speakers": int(frame["speaker"].nunique()),
               "language": corpus_language(frame), "protocols": {}}
    maps = {protocol: label_map}  # the asked protocol keeps its map even when named full or iemocap4
    maps.setdefault("full", None)
    maps.setdefault("iemocap4", LABEL_MAPS["iemocap4"])
    for name, mapping in maps.items():
        try:
            mapped = apply_label_map(frame, mapping, corpus=corpus)
        except ManifestError:
            if name == protocol:
                raise
            logger.info("%s: no protocol %s (fewer than 2 of its classes in the corpus)", corpus, name)
            continue
        fold_k = fitted_k(mapped["speaker"].nunique(), k, default_k, corpus)
        folds = {"lkso": leave_k_speakers_out(mapped, fold_k, genders)}
        write_emotion_protocol(out, name, mapped, folds)
        summary["protocols"][name] = {"utterances": len(mapped),
                                      "classes": mapped["emotion"].value_counts().sort_index().to_dict(),
                                      "fold_schemes": ["lkso"], "k": fold_k, "folds": len(folds["lkso"]),
                                      "label_map": mapping}
    summary["utterances"] = summary["protocols"][protocol]["utterances"]
    write_summary(os.path.join(out, "summary.json"), summary)
    return summary
