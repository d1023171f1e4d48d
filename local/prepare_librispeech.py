#!/usr/bin/env python3
"""LibriSpeech preparer: ``<subset>/<spk>/<chapter>/<spk>-<chapter>-<n>.flac`` + ``.trans.txt``.

``read_librispeech(root, subsets)`` returns one ASR manifest (``ser_modules.data.corpus.ASR_COLUMNS``)
per requested subset. Subsets whose name starts with ``train`` form the training split, ``dev-*``
the validation split and ``test-*`` the test split (see ``local/prepare_asr.py``).
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from ser_modules.data.text import normalize_transcript
from ser_modules.utils.audio_file import header_duration
from ser_modules.utils.fileio import ManifestError

logger = logging.getLogger("prepare_librispeech")

# The demo corpus's subsets (and the smallest real training set).
DEFAULT_SUBSETS = {"train": ["train-clean-100"], "dev": ["dev-clean"], "test": ["test-clean"]}
# The papers' ~960 h (Lakomkin 2018, Yeh 2020): what --size paper trains on unless told otherwise.
PAPER_SUBSETS = {"train": ["train-clean-100", "train-clean-360", "train-other-500"], "dev": ["dev-clean"],
                 "test": ["test-clean"]}


def read_subset(root: str, subset: str) -> pd.DataFrame:
    """All utterances of one subset folder (``root/subset``) with their transcripts."""
    folder = os.path.join(root, subset)
    if not os.path.isdir(folder):
        raise ManifestError(f"{folder}: LibriSpeech subset not found (subsets in {root}: "
                            f"{sorted(os.listdir(root)) if os.path.isdir(root) else 'none'})")
    rows = []
    for speaker in sorted(os.listdir(folder)):
        spk_dir = os.path.join(folder, speaker)
        if not os.path.isdir(spk_dir):
            continue
        for chapter in sorted(os.listdir(spk_dir)):
            ch_dir = os.path.join(spk_dir, chapter)
            trans = os.path.join(ch_dir, f"{speaker}-{chapter}.trans.txt")
            if not os.path.isfile(trans):
                logger.warning("%s: no transcript file, chapter skipped", trans)
                continue
            with open(trans, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    utt, _, text = line.partition(" ")
                    audio = os.path.join(ch_dir, f"{utt}.flac")
                    if not os.path.isfile(audio):
                        alt = os.path.join(ch_dir, f"{utt}.wav")
                        if not os.path.isfile(alt):
                            logger.warning("%s:%d: no audio for %s, skipped", trans, n, utt)
                            continue
                        audio = alt
                    rows.append({"ID": f"ls-{utt}", "wav": os.path.abspath(audio), "seg_start": "", "seg_end": "",
                                 "duration": header_duration(audio), "speaker": f"ls-{speaker}",
                                 "corpus": "librispeech", "transcript": normalize_transcript(text)})
    if not rows:
        raise ManifestError(f"{folder}: no utterances found")
    logger.info("librispeech %s: %d utterances, %.2f h", subset, len(rows), sum(r["duration"] for r in rows) / 3600)
    return pd.DataFrame(rows)


def check_subsets(root: str, subsets: dict[str, list[str]]) -> None:
    """:class:`ManifestError` naming every requested subset folder missing under ``root``, before any is read."""
    missing = [name for names in subsets.values() for name in names if not os.path.isdir(os.path.join(root, name))]
    if missing:
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) if os.path.isdir(root) else []
        raise ManifestError(f"{root}: LibriSpeech subset(s) {', '.join(missing)} not found (found: {', '.join(found) or 'none'}); "
                            "--size paper trains on the papers' train-clean-100 + train-clean-360 + train-other-500 "
                            "(dev-clean, test-clean): to use fewer, name them, e.g. --librispeech-subsets "
                            "'train=train-clean-100;dev=dev-clean;test=test-clean'")


def read_librispeech(root: str, subsets: dict[str, list[str]] | None = None) -> dict[str, pd.DataFrame]:
    """``{split: manifest}`` for the subsets of each split (default: train-clean-100, dev-clean, test-clean);
    every subset must exist (checked before any is read)."""
    subsets = subsets or DEFAULT_SUBSETS
    check_subsets(root, subsets)
    return {split: pd.concat([read_subset(root, s) for s in names], ignore_index=True)
            for split, names in subsets.items() if names}
