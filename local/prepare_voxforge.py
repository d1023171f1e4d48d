#!/usr/bin/env python3
"""VoxForge (English) preparer: the extracted submission archives as an ASR manifest.

Layout as distributed: one folder per submission, ``<root>/<user>-<date>-<id>/`` (e.g.
``Aaron-20080318-kdl``), holding ``etc/PROMPTS`` with one line per utterance,
``<user>-<date>-<id>/mfc/a0001 SOME WORDS HERE``, and the audio as ``wav/a0001.wav`` or
``flac/a0001.flac`` (48 or 16 kHz, mono or stereo: converted where the audio is read,
``ser_modules.data.audio.load_audio``). Submissions by unregistered users are all by ``anonymous``, so
each anonymous folder is taken as a speaker of its own.

``read_voxforge(root)`` puts every utterance in ``train`` (VoxForge has no official dev/test);
``heldout_fraction`` > 0 holds out that share of the speakers, alternately into ``dev`` and ``test``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter

import pandas as pd

from ser_modules.data.text import normalize_transcript
from ser_modules.utils.audio_file import header_duration
from ser_modules.utils.fileio import ManifestError

logger = logging.getLogger("prepare_voxforge")

_FOLDER = re.compile(r"^(.+)-(\d{8})-([^-]+)$")
AUDIO_LOCATIONS = (("wav", ".wav"), ("flac", ".flac"))


def folder_speaker(folder: str) -> str:
    """Speaker of a submission folder: ``vf-<user>``, or ``vf-<folder>`` for anonymous submissions
    (and for folder names that do not follow ``<user>-<date>-<id>``)."""
    m = _FOLDER.match(folder)
    if not m:
        logger.warning("%s: folder name is not <user>-<YYYYMMDD>-<id>; the whole name is the speaker", folder)
        return f"vf-{folder}"
    user = m.group(1)
    return f"vf-{folder}" if user.lower() == "anonymous" else f"vf-{user}"


def find_audio(folder_path: str, utt: str) -> str | None:
    """``wav/<utt>.wav`` or ``flac/<utt>.flac`` of a submission, whichever exists."""
    for sub, ext in AUDIO_LOCATIONS:
        path = os.path.join(folder_path, sub, utt + ext)
        if os.path.isfile(path):
            return path
    return None


def read_submission(root: str, folder: str, counts: Counter) -> list[dict]:
    """Rows of one submission folder; skipped prompts are warned about and tallied in ``counts``."""
    folder_path = os.path.join(root, folder)
    prompts = os.path.join(folder_path, "etc", "PROMPTS")
    if not os.path.isfile(prompts):
        logger.warning("%s: no etc/PROMPTS; submission skipped", folder_path)
        counts["folders without PROMPTS"] += 1
        return []
    speaker, rows = folder_speaker(folder), []
    with open(prompts, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            path, _, text = line.strip().partition(" ")
            utt = os.path.basename(path)
            audio = find_audio(folder_path, utt)
            if audio is None:
                logger.warning("%s:%d: no wav/%s.wav or flac/%s.flac; skipped", prompts, number, utt, utt)
                counts["prompts without audio"] += 1
                continue
            transcript = normalize_transcript(text)
            if not transcript:
                counts["empty transcript"] += 1
                continue
            rows.append({"ID": f"vf-{folder}-{utt}", "wav": os.path.abspath(audio), "seg_start": "", "seg_end": "",
                         "duration": header_duration(audio), "speaker": speaker, "corpus": "voxforge",
                         "transcript": transcript})
    return rows


def heldout_speakers(speakers, fraction: float) -> tuple[list[str], list[str]]:
    """``(dev, test)`` speakers: ``fraction`` of the sorted speakers, evenly spaced through the list
    (so not one alphabetical block), alternately dev and test; at least one speaker stays in train."""
    ordered = sorted(set(speakers))
    n = len(ordered)
    n_held = min(n - 1, max(1, int(fraction * n + 0.5)))
    if n_held < 1:
        logger.warning("voxforge: a single speaker, nothing can be held out")
        return [], []
    picks = [ordered[int((i + 0.5) * n / n_held)] for i in range(n_held)]
    return picks[0::2], picks[1::2]


def read_voxforge(root: str, heldout_fraction: float = 0.0) -> dict[str, pd.DataFrame]:
    """``{"train": manifest}`` (plus ``dev``/``test`` with held-out speakers) of the submissions under ``root``.
    Only non-empty splits are returned."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if not os.path.isdir(root):
        raise ManifestError(f"{root}: VoxForge root folder not found")
    rows, counts = [], Counter()
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    for folder in folders:
        rows.extend(read_submission(root, folder, counts))
    if not rows:
        raise ManifestError(f"{root}: no VoxForge utterances found in {len(folders)} folders "
                            f"(expected <user>-<date>-<id>/etc/PROMPTS with wav/ or flac/)")
    frame = pd.DataFrame(rows)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(counts.items())) or "none"
    logger.info("voxforge: %d utterances, %d speakers, %d folders, %.2f h; skipped: %s", len(frame),
                frame["speaker"].nunique(), len(folders), frame["duration"].sum() / 3600, skipped)
    if heldout_fraction <= 0:
        return {"train": frame}
    dev, test = heldout_speakers(frame["speaker"], heldout_fraction)
    splits = {"train": frame[~frame["speaker"].isin(dev + test)], "dev": frame[frame["speaker"].isin(dev)],
              "test": frame[frame["speaker"].isin(test)]}
    logger.info("voxforge held-out speakers: dev %s, test %s", dev, test)
    return {name: split.reset_index(drop=True) for name, split in splits.items() if not split.empty}
