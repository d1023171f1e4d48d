"""Stage 1's check of every audio file a manifest names, before anything trains on it.

Crowd-sourced corpora (VoxForge) and long downloads hold a few files that cannot be read, hold NaN or
infinite samples, are digital silence, or are shorter than one analysis window. Met inside a data
loader, one such file stops a days-long training, and a rerun meets the same batch again. So stage 1
reads every file (or segment) once, in ``nj`` processes with a progress bar, keeps the good rows and
moves the bad ones to ``rejected.csv`` with the reason, and logs how many.
"""

from __future__ import annotations

import logging
import multiprocessing as mp

import numpy as np
import pandas as pd
from tqdm import tqdm

from ser_modules.utils.audio_file import row_problem
from ser_modules.utils.fileio import write_csv

logger = logging.getLogger(__name__)

# The longest analysis window of the toolkit's front ends: MFCC of the LAS (25 ms), the first
# convolution of wav2vec 2.0-style upstreams (400 samples); DeepSpeech2 and the handcrafted features use 20 ms.
MIN_SECONDS = 0.025
REJECTED_COLUMNS = ["corpus", "split", "ID", "wav", "seg_start", "seg_end", "reason"]


class AudioScreen:
    """Checks the audio of manifests (:func:`~ser_modules.utils.audio_file.audio_problem`) in ``nj`` processes and collects the rows it
    rejects; :meth:`write` saves them as ``rejected.csv``. Calling it on a frame returns the good rows."""

    def __init__(self, nj: int = 1, min_seconds: float = MIN_SECONDS):
        self.nj, self.min_seconds = max(1, int(nj)), float(min_seconds)
        self.rejected: list[dict] = []

    def __call__(self, frame: pd.DataFrame, corpus: str, split: str = "") -> pd.DataFrame:
        """The rows of ``frame`` (``ID, wav`` and optional ``seg_start, seg_end``) whose audio is usable."""
        if not len(frame):
            return frame
        starts = frame["seg_start"] if "seg_start" in frame.columns else [None] * len(frame)
        ends = frame["seg_end"] if "seg_end" in frame.columns else [None] * len(frame)
        jobs = [(i, w, s, e, self.min_seconds) for i, (w, s, e) in enumerate(zip(frame["wav"], starts, ends))]
        problems: dict[int, str] = {}
        desc = f"checking {corpus}{' ' + split if split else ''} audio"
        if self.nj > 1 and len(jobs) >= 8 * self.nj:
            # forkserver: forking a process whose OpenMP threads have started can hang the child; the workers
            # import only ser_modules.utils.audio_file (numpy, soundfile), not torch.
            with mp.get_context("forkserver").Pool(self.nj) as pool:
                results = pool.imap_unordered(row_problem, jobs, chunksize=max(1, min(256, len(jobs) // (16 * self.nj))))
                problems = {i: why for i, why in tqdm(results, total=len(jobs), desc=desc, unit="file") if why}
        else:
            problems = {i: why for i, why in map(row_problem, tqdm(jobs, desc=desc, unit="file")) if why}
        for i in sorted(problems):
            row = frame.iloc[i]
            self.rejected.append({"corpus": corpus, "split": split, "ID": row["ID"], "wav": row["wav"],
                                  "seg_start": row.get("seg_start", ""), "seg_end": row.get("seg_end", ""),
                                  "reason": problems[i]})
        if problems:
            logger.warning("%s%s: %d of %d utterances rejected (unreadable, non-finite, silent or shorter than %.0f ms), "
                           "e.g. %s; listed in rejected.csv", corpus, f" {split}" if split else "", len(problems),
                           len(frame), self.min_seconds * 1000, problems[min(problems)])
        else:
            logger.info("%s%s: all %d audio files readable, finite, not silent, long enough", corpus,
                        f" {split}" if split else "", len(frame))
        keep = np.ones(len(frame), dtype=bool)
        keep[list(problems)] = False
        return frame[keep].reset_index(drop=True)

    def count(self, corpus: str | None = None, split: str | None = None) -> int:
        return sum(1 for r in self.rejected if (corpus is None or r["corpus"] == corpus)
                   and (split is None or r["split"] == split))

    def write(self, path: str) -> None:
        """``rejected.csv``: one row per rejected utterance with the reason (written even when empty)."""
        write_csv(path, pd.DataFrame(self.rejected, columns=REJECTED_COLUMNS))
