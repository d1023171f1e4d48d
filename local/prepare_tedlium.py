#!/usr/bin/env python3
"""TED-LIUM release 2 preparer: segments of the talk recordings as ASR manifests.

Layout as distributed (``TEDLIUM_release2/``): ``<root>/{train,dev,test}/stm/<talk>.stm`` and
``<root>/{train,dev,test}/sph/<talk>.sph`` (16 kHz NIST SPHERE, read by libsndfile). An STM line is
``<talk> <channel> <speaker> <start> <end> [<label>] words...`` with times in seconds and a label
such as ``<o,f0,male>``; lines starting with ``;;`` are comments and segments whose words are
``ignore_time_segment_in_scoring`` are not speech to train on.

The transcripts are lower case and tokenised: clitics are split off (``it 's``, ``don 't``,
``you 're``), pronunciation variants are marked ``word(2)``, annotations are ``{NOISE}``
``{BREATH}`` ``<unk>`` ``<sil>``, and training lines may end with the segment's name in
parentheses. :func:`clean_transcript` undoes all of that before ``normalize_transcript``.

``read_tedlium(root)`` returns ``{"train", "dev", "test"}`` manifests (``ASR_COLUMNS``): one row per
segment with ``seg_start``/``seg_end`` in seconds into the talk's ``.sph``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter

import pandas as pd

from ser_modules.data.text import normalize_transcript
from ser_modules.utils.audio_file import AudioReadError, audio_info
from ser_modules.utils.fileio import ManifestError

logger = logging.getLogger("prepare_tedlium")

SPLITS = ("train", "dev", "test")
IGNORE = "ignore_time_segment_in_scoring"
# Clitics TED-LIUM splits off the word before; other apostrophe words ('cause, 'em) stand alone.
CLITICS = {"'s", "'t", "'re", "'ve", "'ll", "'d", "'m"}
_VARIANT = re.compile(r"\(\d+\)$")
_PARENTHESISED = re.compile(r"^\(.*\)$")
_ANNOTATION = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
# The optional STM label: <o,f0,male> in train/test, <F0_M> in dev (a leading <unk> word is dropped anyway).
_LABEL = re.compile(r"^<[^>]*>$")


def clean_transcript(text: str) -> str:
    """TED-LIUM words -> normalised transcript: variants ``(2)`` and parenthesised segment names
    removed, clitics joined to their word, annotation tokens dropped, then ``normalize_transcript``.

    ``"i don 't know {NOISE} it 's like(2) <unk> 's"`` -> ``"I DON'T KNOW IT'S LIKE"``.
    """
    words: list[str] = []
    for token in text.split():
        token = _VARIANT.sub("", token)
        if not token or _PARENTHESISED.match(token):
            continue
        if token.lower() in CLITICS and words:
            words[-1] += token
        else:
            words.append(token)
    # "<unk>'s" is as unknown as "<unk>": drop the whole word, not just the bracketed part
    return normalize_transcript(" ".join(w for w in words if not _ANNOTATION.search(w)))


def parse_stm_line(path: str, number: int, line: str) -> dict | None:
    """One STM line as ``talk, speaker, start, end, words``; None for comments and blank lines."""
    if not line.strip() or line.startswith(";;"):
        return None
    fields = line.split()
    if len(fields) < 5:
        raise ManifestError(f"{path}:{number}: an STM line needs <talk> <channel> <speaker> <start> <end>: {line!r}")
    try:
        start, end = float(fields[3]), float(fields[4])
    except ValueError as err:
        raise ManifestError(f"{path}:{number}: start/end {fields[3]!r} {fields[4]!r} are not seconds") from err
    words = fields[6:] if len(fields) > 5 and _LABEL.match(fields[5]) else fields[5:]
    return {"talk": fields[0], "speaker": fields[2], "start": start, "end": end, "words": " ".join(words)}


def talk_duration(sph: str) -> float:
    """Length of a talk's recording in seconds; a missing or unreadable file names itself."""
    try:
        sr, frames, _ = audio_info(sph)
    except AudioReadError as err:
        raise ManifestError(str(err)) from err
    return frames / sr


def read_stm(path: str, sph_dir: str, counts: Counter) -> list[dict]:
    """Manifest rows of one talk's STM file; skipped segments are tallied in ``counts``."""
    rows, seen, durations = [], set(), {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            seg = parse_stm_line(path, number, line)
            if seg is None:
                continue
            if seg["words"].strip() == IGNORE:
                counts["ignore_time_segment_in_scoring"] += 1
                continue
            sph = os.path.join(sph_dir, seg["talk"] + ".sph")
            if sph not in durations:
                if not os.path.isfile(sph):
                    raise ManifestError(f"{sph}: no such audio file (talk {seg['talk']} of {path})")
                durations[sph] = talk_duration(sph)
            start, end = seg["start"], min(seg["end"], durations[sph])  # a few segments overrun the talk
            if end <= start:
                logger.warning("%s:%d: segment [%.2f, %.2f] s is empty or outside the %.2f s talk; skipped",
                               path, number, seg["start"], seg["end"], durations[sph])
                counts["outside the recording"] += 1
                continue
            transcript = clean_transcript(seg["words"])
            if not transcript:
                counts["empty transcript"] += 1
                continue
            uid = f"ted-{seg['talk']}-{int(round(start * 100)):07d}"
            if uid in seen:
                logger.warning("%s:%d: a second segment starting at %.2f s; skipped", path, number, start)
                counts["duplicate start"] += 1
                continue
            seen.add(uid)
            rows.append({"ID": uid, "wav": os.path.abspath(sph), "seg_start": round(start, 3), "seg_end": round(end, 3),
                         "duration": round(end - start, 3), "speaker": f"ted-{seg['speaker']}", "corpus": "tedlium",
                         "transcript": transcript})
    return rows


def read_split(root: str, split: str) -> pd.DataFrame:
    """Every talk of ``root/split``: one row per scored segment."""
    stm_dir, sph_dir = os.path.join(root, split, "stm"), os.path.join(root, split, "sph")
    if not os.path.isdir(stm_dir):
        raise ManifestError(f"{stm_dir}: not found; --root must be the TED-LIUM release 2 folder "
                            f"holding train/ dev/ test/")
    rows, counts = [], Counter()
    for name in sorted(os.listdir(stm_dir)):
        if name.endswith(".stm") and not name.startswith("."):
            rows.extend(read_stm(os.path.join(stm_dir, name), sph_dir, counts))
    if not rows:
        raise ManifestError(f"{stm_dir}: no scored segments in any .stm file")
    frame = pd.DataFrame(rows)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(counts.items())) or "none"
    logger.info("tedlium %s: %d segments of %d talks, %.2f h; dropped: %s", split, len(frame),
                frame["wav"].nunique(), frame["duration"].sum() / 3600, skipped)
    return frame


def read_tedlium(root: str) -> dict[str, pd.DataFrame]:
    """``{"train": ..., "dev": ..., "test": ...}`` ASR manifests of TED-LIUM release 2 under ``root``."""
    return {split: read_split(root, split) for split in SPLITS}
