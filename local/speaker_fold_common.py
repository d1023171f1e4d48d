"""Pieces shared by the preparers of emotion corpora without sessions (RAVDESS, CREMA-D, EmoDB, CSV).

Each of those preparers reads its corpus into a frame ``ID, wav, duration, speaker, gender, label,
transcript`` and hands it to :func:`ser_modules.data.corpus.write_speaker_fold_corpus`; this module
holds the audio probing, the skip bookkeeping and the command line they have in common.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator

from ser_modules.data.audio_screen import AudioScreen
from ser_modules.data.corpus import resolve_label_map
from ser_modules.utils.audio_file import AudioReadError, audio_info
from ser_modules.utils.fileio import setup_logging

logger = logging.getLogger("speaker_fold_common")


def iter_files(folder: str, extension: str = ".wav") -> Iterator[str]:
    """Sorted names of the ``extension`` files of ``folder`` (case-insensitive), hidden files left out
    (macOS archives add ``._<name>`` AppleDouble files beside every real one)."""
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not name.lower().endswith(extension):
            continue
        if os.path.isfile(os.path.join(folder, name)):
            yield name


def probe_duration(path: str) -> float:
    """Duration in seconds from the header; 0.0 when the header cannot be read. Such a file stays in
    the frame: stage 1's audio check (:class:`~ser_modules.data.audio_screen.AudioScreen`) lists it in
    ``rejected.csv`` with its reason, as it does every unusable file of every corpus kind."""
    try:
        sr, frames, _ = audio_info(path)
    except AudioReadError:
        return 0.0
    return round(frames / sr, 4) if sr else 0.0


def log_counts(corpus: str, kept: int, skipped: Counter) -> None:
    """One line with what was kept and why files were left out."""
    if skipped:
        logger.info("%s: %d utterances kept; left out: %s", corpus, kept,
                    ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    else:
        logger.info("%s: %d utterances kept", corpus, kept)


def speaker_fold_main(argv, prepare: Callable[..., dict], description: str, default_k: int,
                      root_help: str = "corpus folder as distributed") -> None:
    """Command line of a speaker-fold preparer: ``--root --out [--label-map] [--k] [--protocol] [--log]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help=root_help)
    parser.add_argument("--out", required=True, help="output folder (receives <protocol>/ and summary.json)")
    parser.add_argument("--label-map", default=None,
                        help="iemocap4, inline 'label:class,...' or a JSON file; unmapped labels are dropped")
    parser.add_argument("--k", type=int, default=None,
                        help=f"speakers per test group, leave-k-speakers-out (default {default_k}, smaller for a "
                             "corpus with fewer than 3 groups of it)")
    parser.add_argument("--protocol", default="default", help="name of the protocol folder (default: default)")
    parser.add_argument("--log", default=None, help="append the log to this file")
    parser.add_argument("--nj", type=int, default=1, help="processes checking the audio")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    screen = AudioScreen(args.nj)
    prepare(args.root, args.out, label_map=resolve_label_map(args.label_map), k=args.k, protocol=args.protocol,
            screen=screen)
    screen.write(os.path.join(args.out, "rejected.csv"))
