#!/usr/bin/env python3
"""Stage 1's evaluation corpora: emotion corpora a recipe scores its trained models on, training nothing.

Each ``--eval-corpus KIND [--eval-root DIR] [--eval-label-map MAP]`` (repeatable; a root and a map belong
to the ``--eval-corpus`` before them) is read with the preparer of its kind and written to
``<data>/eval/<name>/manifest.csv``: every utterance is test data, its labels mapped onto the training
corpus's classes (:func:`ser_modules.data.eval_corpora.map_onto_training_classes`). IEMOCAP-layout corpora
(``iemocap``, ``demo-other``) keep their dialogs (``turns.csv``: the context IAAN reads) and take the
training protocol's classes (``standard`` for a training corpus without IEMOCAP protocols); the turns the protocol leaves out are
counted as dropped, and an ``--eval-label-map`` applies to every turn's consensus code instead.
``demo-other`` is the second synthetic demo corpus (other voices, another prosody style), made once in
``--eval-root`` (default: ``<demo-dir>-other``). ``<data>/eval/corpora.json`` lists the corpora of this
run, which stages 4-6 read; a corpus prepared before with the same inputs is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ser_modules.data.audio_screen import MIN_SECONDS, AudioScreen  # noqa: E402
from ser_modules.data.corpus import EMOTION_COLUMNS, complete_columns, resolve_label_map  # noqa: E402
from ser_modules.data.eval_corpora import EVAL_KINDS, eval_dir, eval_names, map_onto_training_classes, write_eval_list
from ser_modules.utils.fileio import (
    ManifestError,
    cpu_count,
    read_json,
    read_manifest,
    run_main,
    setup_logging,
    write_csv,
    write_json,
)

logger = logging.getLogger("prepare_eval")

# Corpora without sessions: the module in local/, its reader and its language (csv: its own column).
SPEAKER_CORPUS_READERS = {
    "ravdess": ("prepare_ravdess", "read_ravdess", "en"),
    "crema-d": ("prepare_cremad", "read_cremad", "en"),
    "emodb": ("prepare_emodb", "read_emodb", "de"),
    "csv": ("prepare_csv", "read_csv", ""),
}
IEMOCAP_PROTOCOLS = ("standard", "lakomkin2018", "lakomkin2018_strict")


class EvalCorpusAction(argparse.Action):
    """``--eval-corpus`` starts a corpus; ``--eval-root`` / ``--eval-label-map`` complete the last one."""

    def __call__(self, parser, namespace, value, option_string=None):
        corpora = getattr(namespace, "eval_corpora", None) or []
        if option_string == "--eval-corpus":
            corpora.append({"kind": value, "root": None, "label_map": None})
        elif not corpora:
            parser.error(f"{option_string} belongs to an --eval-corpus given before it")
        else:
            key = "root" if option_string == "--eval-root" else "label_map"
            if corpora[-1][key] is not None:
                parser.error(f"{option_string} given twice for --eval-corpus {corpora[-1]['kind']}")
            corpora[-1][key] = value
        namespace.eval_corpora = corpora


def code_digest() -> str:
    """The preparers' code: a change of it prepares the evaluation corpora again."""
    here = os.path.dirname(os.path.abspath(__file__))
    lib = os.path.join(os.path.dirname(here), "ser_modules")
    paths = sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py"))
    paths += [os.path.join(lib, *m.split("/")) + ".py"
              for m in ("data/corpus", "data/eval_corpora", "data/audio_screen", "utils/audio_file")]
    digest = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def eval_root(spec: dict, demo_dir: str | None) -> str:
    """The absolute folder (or CSV file) of an evaluation corpus; ``demo-other`` defaults to ``<demo-dir>-other``."""
    root = spec["root"]
    if spec["kind"] == "demo-other" and not root:
        if not demo_dir:
            raise ManifestError("--eval-corpus demo-other needs --eval-root or --demo-dir")
        root = f"{demo_dir.rstrip('/')}-other"
    if not root:
        raise ManifestError(f"--eval-corpus {spec['kind']} needs --eval-root (the corpus as distributed)")
    return os.path.abspath(root)


def read_iemocap_layout(root: str, work: str, protocol: str, screen: AudioScreen) -> tuple:
    """An IEMOCAP-layout corpus prepared in ``work`` -> (the protocol's utterances, all turns)."""
    from prepare_iemocap import prepare_iemocap

    prepare_iemocap(root, work, strict_counts=False, screen=screen)
    manifest = read_manifest(os.path.join(work, protocol, "manifest.csv"), ("ID", "wav", "emotion"))
    return manifest, read_manifest(os.path.join(work, "turns.csv"))


def prepare_eval_corpus(spec: dict, name: str, data_dir: str, protocol: str, classes: list[str], demo_dir: str | None,
                        screen: AudioScreen) -> dict:
    """Write one evaluation corpus to ``<data>/eval/<name>/``; returns its summary."""
    kind, out = spec["kind"], eval_dir(data_dir, name)
    root = spec["root"]
    if kind == "demo-other":
        from make_demo_corpus import make_demo_corpus

        # Synthesis is short and embarrassingly parallel: every core, as for the first demo corpus.
        root = make_demo_corpus(root, None, nj=os.cpu_count() or 1, style="other")["iemocap"]
    turns, outside = None, Counter()
    mapping = resolve_label_map(spec["label_map"]) if spec["label_map"] is not None else None
    if kind in ("demo-other", "iemocap"):
        eval_protocol = protocol if protocol in IEMOCAP_PROTOCOLS else "standard"
        frame, turns = read_iemocap_layout(root, os.path.join(out, "corpus"), eval_protocol, screen)
        language = "en"
        if mapping is not None:  # a map reaches the consensus codes of every turn (fru:ang, exc:hap, ...)
            frame, column = turns, "label"
        else:  # the protocol's classes; the turns it leaves out are counted by their consensus code
            outside = Counter(turns.loc[~turns["ID"].isin(frame["ID"]), "label"].astype(str))
            column = "emotion"
    else:
        module, reader, language = SPEAKER_CORPUS_READERS[kind]
        frame = getattr(importlib.import_module(module), reader)(root)
        frame = screen(frame, name)
        column = "label"
    frame, counts = map_onto_training_classes(frame, column, mapping, classes, name,
                                              default_names=kind in ("ravdess", "crema-d", "emodb"))
    counts["dropped"] = dict(sorted((Counter(counts["dropped"]) + outside).items()))
    if "language" not in frame.columns or (frame["language"] == "").all():
        frame["language"] = language
    write_csv(os.path.join(out, "manifest.csv"), complete_columns(frame, EMOTION_COLUMNS))
    if turns is not None:
        write_csv(os.path.join(out, "turns.csv"), turns)
    summary = {"name": name, "kind": kind, "root": os.path.abspath(root), "label_map": spec["label_map"],
               "language": ",".join(sorted({c for c in frame["language"] if c})), "utterances": len(frame),
               "speakers": int(frame["speaker"].nunique()), "training_classes": classes,
               "dialog_context": turns is not None, **counts}
    write_json(os.path.join(out, "summary.json"), summary)
    logger.info("evaluation corpus %s (%s): %d utterances %s; %d dropped (labels %s)%s", name, kind, len(frame),
                summary["classes"], sum(counts["dropped"].values()), counts["dropped"] or "none",
                f"; training classes without utterances: {counts['missing_classes']}" if counts["missing_classes"] else "")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the experiment's data folder (stage 1's --out)")
    parser.add_argument("--protocol", required=True, help="the training protocol (its classes are the targets)")
    parser.add_argument("--eval-corpus", action=EvalCorpusAction, choices=EVAL_KINDS, dest="eval_corpora", metavar="KIND",
                        help=f"an evaluation corpus: {', '.join(EVAL_KINDS)} (repeatable)")
    parser.add_argument("--eval-root", action=EvalCorpusAction, dest="eval_corpora", metavar="DIR",
                        help="its folder as distributed (a CSV file for csv)")
    parser.add_argument("--eval-label-map", action=EvalCorpusAction, dest="eval_corpora", metavar="MAP",
                        help="its labels onto the training classes: iemocap4, 'label:class,...' or a JSON file")
    parser.add_argument("--demo-dir", default=None, help="the demo corpus folder (demo-other goes beside it)")
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS)
    parser.add_argument("--nj", type=int, default=0, help="processes checking audio (0: one per CPU core)")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    setup_logging(args.log)
    specs = args.eval_corpora or []
    training = os.path.join(args.data_dir, "emotion", args.protocol, "manifest.csv")
    classes = sorted(read_manifest(training, ("ID", "emotion"))["emotion"].unique())
    names = eval_names([s["kind"] for s in specs])
    digest = code_digest()
    for spec, name in zip(specs, names):
        spec = {**spec, "root": eval_root(spec, args.demo_dir)}
        # what the prepared corpus depends on: the resolved folder and map (a JSON map's contents), not their spelling
        stamp = {**spec, "mapping": resolve_label_map(spec["label_map"]) if spec["label_map"] is not None else None,
                 "protocol": args.protocol, "classes": classes, "min_seconds": args.min_seconds, "code": digest}
        stamp_path = os.path.join(eval_dir(args.data_dir, name), "stamp.json")
        if os.path.isfile(stamp_path) and read_json(stamp_path) == stamp \
                and os.path.isfile(os.path.join(eval_dir(args.data_dir, name), "manifest.csv")):
            logger.info("evaluation corpus %s already prepared (same inputs), reused", name)
            continue
        screen = AudioScreen(args.nj if args.nj > 0 else cpu_count(), args.min_seconds)
        prepare_eval_corpus(spec, name, args.data_dir, args.protocol, classes, args.demo_dir, screen)
        screen.write(os.path.join(eval_dir(args.data_dir, name), "rejected.csv"))
        write_json(stamp_path, stamp)
    write_eval_list(args.data_dir, names)


if __name__ == "__main__":
    run_main(main, "prepare_eval")
