#!/usr/bin/env python3
"""Stage 1 of every recipe: prepare the emotion corpus and the ASR corpora into ``--out``.

``--out/emotion/`` receives the emotion corpus's protocols and folds, ``--out/asr/`` the combined
ASR splits (with ``--size paper``, LibriSpeech's 960 h of the papers unless ``--librispeech-subsets``
names others). Every audio file is checked once (readable, finite, not silent, at least one analysis
window) in ``--nj`` processes; the rejected ones are listed in ``emotion/rejected.csv`` and
``asr/rejected.csv`` with the reason and left out. With ``--emotion-corpus demo`` and/or ``--asr-corpus demo`` the built-in demo corpus
is synthesised once into ``--demo-dir`` (or reused) and read by the IEMOCAP and LibriSpeech
preparers, exactly as the real corpora are. With ``--emobox-dir``, EmoBox's published folds of the corpus
are written beside the toolkit's as ``folds_emobox.json`` of ``--emobox-protocol``
(:mod:`ser_modules.data.emobox`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ser_modules.data.audio_screen import MIN_SECONDS, AudioScreen  # noqa: E402
from ser_modules.data.corpus import resolve_label_map  # noqa: E402
from ser_modules.data.emobox import emobox_folds  # noqa: E402
from ser_modules.data.folds import check_speaker_independence, save_folds  # noqa: E402
from ser_modules.utils.fileio import ManifestError, cpu_count, run_main, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("prepare_data")

EMOTION_CORPORA = ("demo", "iemocap", "ravdess", "crema-d", "emodb", "msp-podcast", "csv")
ASR_CORPORA = ("demo", "librispeech", "tedlium", "voxforge")
ASR_LANGUAGE = "en"  # every ASR corpus above is English
# Speaker-fold corpora: module in local/ and its default k for leave-k-speakers-out.
SPEAKER_FOLD_PREPARERS = {
    "ravdess": ("prepare_ravdess", "prepare_ravdess"),
    "crema-d": ("prepare_cremad", "prepare_cremad"),
    "emodb": ("prepare_emodb", "prepare_emodb"),
    "msp-podcast": ("prepare_msp_podcast", "prepare_msp_podcast"),
    "csv": ("prepare_csv", "prepare_csv"),
}


def prepare_emotion(corpus: str, root: str | None, out: str, label_map: str | None, k: int | None,
                    seed: int, valid_fraction: float, strict_counts: bool, screen: AudioScreen | None = None) -> dict:
    from prepare_iemocap import prepare_iemocap

    if corpus in ("demo", "iemocap"):
        return prepare_iemocap(root, out, valid_fraction=valid_fraction, seed=seed, strict_counts=strict_counts,
                               screen=screen)
    module, func = SPEAKER_FOLD_PREPARERS[corpus]
    kwargs = {"label_map": resolve_label_map(label_map), "screen": screen}
    if k:
        kwargs["k"] = k
    return getattr(importlib.import_module(module), func)(root, out, **kwargs)


def write_emobox_folds(emotion_dir: str, protocol: str, corpus: str, emobox_dir: str, seed: int,
                       rejected: list[dict]) -> dict:
    """EmoBox's folds of the prepared ``protocol`` as ``<emotion_dir>/<protocol>/folds_emobox.json``."""
    import pandas as pd

    folder = os.path.join(emotion_dir, protocol)
    path = os.path.join(folder, "manifest.csv")
    if not os.path.isfile(path):
        made = sorted(d for d in os.listdir(emotion_dir) if os.path.isfile(os.path.join(emotion_dir, d, "manifest.csv")))
        raise ManifestError(f"{path}: protocol {protocol!r} was not prepared for EmoBox's folds (prepared: {made})")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    folds, summary = emobox_folds(manifest, emobox_dir, corpus, seed, rejected=pd.DataFrame(rejected, columns=["ID", "wav"]))
    check_speaker_independence(manifest, folds)
    save_folds(os.path.join(folder, "folds_emobox.json"), "emobox", folds)
    logger.info("EmoBox folds of %s (%s): %d folds, classes %s%s -> %s", corpus, summary["emobox_dir"], len(folds),
                summary["classes"], "; speakers shared between training and test, as EmoBox's" if summary["shared_speakers"]
                else "", os.path.join(folder, "folds_emobox.json"))
    return {**summary, "protocol": protocol}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emotion-corpus", default="demo", choices=EMOTION_CORPORA)
    parser.add_argument("--emotion-root", default=None, help="root folder (or CSV file for --emotion-corpus csv)")
    parser.add_argument("--asr-corpus", action="append", default=None, choices=ASR_CORPORA,
                        help="repeat for several corpora (default: demo)")
    parser.add_argument("--asr-root", action="append", default=None, help="one per --asr-corpus, same order")
    parser.add_argument("--out", required=True, help="data folder of the experiment")
    parser.add_argument("--demo-dir", default=None, help="where the demo corpus is synthesised or reused")
    parser.add_argument("--label-map", default=None, help="iemocap4, 'label:class,...' or a JSON file")
    parser.add_argument("--k", type=int, default=None, help="speakers per test group (leave-k-speakers-out)")
    parser.add_argument("--emobox-dir", default=None,
                        help="an EmoBox checkout (or its data/ folder): also write EmoBox's folds (scheme emobox)")
    parser.add_argument("--emobox-protocol", default=None,
                        help="the protocol whose classes are EmoBox's (default: standard for IEMOCAP, full otherwise)")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--max-duration", type=float, default=15.0, help="drop longer ASR training utterances (s)")
    parser.add_argument("--size", default="demo", choices=["demo", "paper"],
                        help="paper: LibriSpeech defaults to the papers' 960 h (train-clean-100 + train-clean-360 + "
                             "train-other-500; dev-clean; test-clean); demo: train-clean-100")
    parser.add_argument("--librispeech-subsets", default=None,
                        help="e.g. 'train=train-clean-100,train-clean-360;dev=dev-clean;test=test-clean' (overrides "
                             "the --size default; may name fewer)")
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS,
                        help="audio shorter than this (one analysis window) is rejected")
    parser.add_argument("--no-strict-counts", action="store_true")
    parser.add_argument("--skip-asr", action="store_true", help="prepare only the emotion corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=0, help="processes checking audio (0: one per CPU core)")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    setup_logging(args.log)
    args.nj = args.nj if args.nj > 0 else cpu_count()

    asr_corpora = args.asr_corpus or ["demo"]
    asr_roots = args.asr_root or []
    needs_demo = args.emotion_corpus == "demo" or ("demo" in asr_corpora and not args.skip_asr)
    demo = None
    if needs_demo:
        from make_demo_corpus import make_demo_corpus

        if not args.demo_dir:
            parser.error("--demo-dir is required when a demo corpus is used")
        # Synthesis is short and embarrassingly parallel: use every core whatever --nj says.
        demo = make_demo_corpus(args.demo_dir, nj=max(args.nj, os.cpu_count() or 1))

    emotion_root = demo["iemocap"] if args.emotion_corpus == "demo" else args.emotion_root
    if not emotion_root:
        parser.error(f"--emotion-root is required for --emotion-corpus {args.emotion_corpus}")
    summary = {"emotion_corpus": args.emotion_corpus}
    # Every audio file is read once here, in --nj processes: unusable ones are listed, not trained on.
    emotion_screen = AudioScreen(args.nj, args.min_seconds)
    summary["emotion"] = prepare_emotion(args.emotion_corpus, emotion_root, os.path.join(args.out, "emotion"),
                                         args.label_map, args.k, args.seed, args.valid_fraction,
                                         not args.no_strict_counts, emotion_screen)
    emotion_screen.write(os.path.join(args.out, "emotion", "rejected.csv"))
    summary["emotion_rejected"] = len(emotion_screen.rejected)
    if args.emobox_dir:
        protocol = args.emobox_protocol or ("standard" if args.emotion_corpus in ("demo", "iemocap") else "full")
        summary["emobox"] = write_emobox_folds(os.path.join(args.out, "emotion"), protocol, args.emotion_corpus,
                                               args.emobox_dir, args.seed, emotion_screen.rejected)
    # Later stages compare them: WER on transcripts of another language measures the mismatch.
    summary["emotion_language"] = summary["emotion"].get("language", "")
    summary["asr_language"] = ASR_LANGUAGE
    if not args.skip_asr:
        from prepare_asr import parse_subsets, prepare_asr
        from prepare_librispeech import DEFAULT_SUBSETS, PAPER_SUBSETS

        real = [c for c in asr_corpora if c != "demo"]
        if len(real) != len(asr_roots):
            raise ManifestError(f"give one --asr-root per real ASR corpus: corpora {real}, roots {asr_roots}")
        subsets = parse_subsets(args.librispeech_subsets) or (PAPER_SUBSETS if args.size == "paper" else DEFAULT_SUBSETS)
        pairs = list(zip(real, asr_roots))
        if "demo" in asr_corpora:  # the demo's LibriSpeech tree has its own three subsets
            pairs.insert(asr_corpora.index("demo"), ("librispeech", demo["librispeech"], DEFAULT_SUBSETS))
        summary["asr"] = prepare_asr(pairs, os.path.join(args.out, "asr"), args.max_duration, subsets,
                                     AudioScreen(args.nj, args.min_seconds))
    write_json(os.path.join(args.out, "prepare_summary.json"), summary)
    logger.info("stage 1 done: data in %s", args.out)


if __name__ == "__main__":
    run_main(main, "prepare_data")
