#!/usr/bin/env python3
"""Combine ASR corpora into one training set (Lakomkin 2018: LibriSpeech + TED-LIUM v2 + VoxForge).

Writes ``<out>/train.csv``, ``dev.csv``, ``test.csv`` (and ``<corpus>_<split>.csv`` per corpus).
Training utterances longer than ``--max-duration`` seconds (default 15, as in Lakomkin 2018) are
dropped with a count in the log; dev and test keep every utterance. Every audio file is read once
(:mod:`ser_modules.data.audio_screen`, ``--nj`` processes): unreadable, non-finite, silent or too short
ones are left out and listed in ``<out>/rejected.csv`` with the reason.

Usage: ``python local/prepare_asr.py --corpus librispeech --root /data/LibriSpeech \
          --corpus tedlium --root /data/TEDLIUM_release2 --out data/asr``
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ser_modules.data.audio_screen import AudioScreen  # noqa: E402
from ser_modules.data.corpus import drop_long_utterances, write_asr_split, write_summary  # noqa: E402
from ser_modules.utils.fileio import ManifestError, run_main, setup_logging  # noqa: E402

logger = logging.getLogger("prepare_asr")

# corpus name -> (module in local/, reader function); each reader returns {split: manifest}.
READERS = {
    "librispeech": ("prepare_librispeech", "read_librispeech"),
    "tedlium": ("prepare_tedlium", "read_tedlium"),
    "voxforge": ("prepare_voxforge", "read_voxforge"),
}
SPLITS = ("train", "dev", "test")


def parse_subsets(spec: str | None) -> dict[str, list[str]] | None:
    """``"train=train-clean-100,train-clean-360;dev=dev-clean;test=test-clean"`` -> dict."""
    if not spec:
        return None
    out = {}
    for part in spec.split(";"):
        split, _, names = part.partition("=")
        if split.strip() not in SPLITS or not names:
            raise ManifestError(f"subset spec {part!r} is not of the form train|dev|test=name[,name]")
        out[split.strip()] = [n.strip() for n in names.split(",") if n.strip()]
    return out


def read_corpus(name: str, root: str, librispeech_subsets: dict | None = None) -> dict[str, pd.DataFrame]:
    if name not in READERS:
        raise ManifestError(f"unknown ASR corpus {name!r}; known: {sorted(READERS)}")
    module, func = READERS[name]
    reader = getattr(importlib.import_module(module), func)
    if not os.path.isdir(root):
        raise ManifestError(f"{root}: {name} root folder not found")
    return reader(root, librispeech_subsets) if name == "librispeech" else reader(root)


def prepare_asr(corpora: list[tuple], out: str, max_duration: float = 15.0, librispeech_subsets: dict | None = None,
                screen: AudioScreen | None = None) -> dict:
    """Read every ``(name, root)`` corpus (or ``(name, root, librispeech_subsets)`` for a LibriSpeech
    tree of its own subsets, as the demo's), check its audio with ``screen`` (rejected rows go to
    ``<out>/rejected.csv``), write per-corpus and combined splits; log and return a summary with the
    hours of every corpus and split used."""
    combined = {s: [] for s in SPLITS}
    summary = {"corpora": {}, "max_duration": max_duration}
    for name, root, *own in corpora:
        subsets = own[0] if own else librispeech_subsets
        splits = read_corpus(name, root, subsets)
        summary["corpora"][name] = {"root": os.path.abspath(root)}
        if name == "librispeech":
            from prepare_librispeech import DEFAULT_SUBSETS

            summary["corpora"][name]["subsets"] = subsets or DEFAULT_SUBSETS
        for split, frame in splits.items():
            if split == "train":
                frame = drop_long_utterances(frame, max_duration, f"{name} {split}")
            if screen is not None:
                frame = screen(frame, name, split)
            write_asr_split(os.path.join(out, f"{name}_{split}.csv"), frame)
            combined[split].append(frame)
            summary["corpora"][name][split] = {"utterances": len(frame), "hours": round(frame["duration"].sum() / 3600, 3),
                                               "rejected": screen.count(name, split) if screen is not None else 0}
    for split, frames in combined.items():
        if not frames:
            raise ManifestError(f"no ASR corpus provides a {split} split; add LibriSpeech (it has dev and test)")
        frame = pd.concat(frames, ignore_index=True)
        if frame["ID"].duplicated().any():
            raise ManifestError(f"duplicate utterance id {frame.loc[frame['ID'].duplicated(), 'ID'].iloc[0]!r} across corpora")
        write_asr_split(os.path.join(out, f"{split}.csv"), frame)
        summary[split] = {"utterances": len(frame), "hours": round(frame["duration"].sum() / 3600, 3),
                          "speakers": int(frame["speaker"].nunique())}
    if screen is not None:
        screen.write(os.path.join(out, "rejected.csv"))
    for name, info in summary["corpora"].items():
        logger.info("ASR corpus %s%s: %s", name, f" ({info['subsets']})" if "subsets" in info else "",
                    ", ".join(f"{split} {info[split]['hours']:.2f} h ({info[split]['utterances']} utterances, "
                              f"{info[split]['rejected']} rejected)" for split in SPLITS if split in info))
    logger.info("ASR data used: %s", ", ".join(f"{split} {summary[split]['hours']:.2f} h" for split in SPLITS))
    write_summary(os.path.join(out, "summary.json"), summary)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append", required=True, choices=sorted(READERS))
    parser.add_argument("--root", action="append", required=True, help="root folder, one per --corpus, same order")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-duration", type=float, default=15.0, help="drop longer training utterances (s)")
    parser.add_argument("--librispeech-subsets", default=None,
                        help="e.g. 'train=train-clean-100,train-clean-360;dev=dev-clean;test=test-clean'")
    parser.add_argument("--nj", type=int, default=1, help="processes checking the audio files")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    setup_logging(args.log)
    if len(args.corpus) != len(args.root):
        parser.error("give one --root per --corpus")
    prepare_asr(list(zip(args.corpus, args.root)), args.out, args.max_duration, parse_subsets(args.librispeech_subsets),
                AudioScreen(args.nj))


if __name__ == "__main__":
    run_main(main, "prepare_asr")
