"""Emotion and transcript for new audio from a trained experiment folder.

Python::

    from ser_modules.infer import EmotionRecognizer
    rec = EmotionRecognizer.from_experiment("recipes/ctc_transfer/exp/demo")   # best variant, all folds
    rows = rec.predict_files(["a.wav", "b.flac"])   # emotion, probabilities, transcript per file

Command line::

    python -m ser_modules.infer EXP_DIR|EXPORT_DIR AUDIO... [--out results.csv|results.json] [--variant NAME]
        [--fold NAME] [--decoder greedy|beam|joint] [--beam-size N] [--ctc-weight W] [--device auto]
        [--batch-size 8] [--long split|refuse] [--context turns.csv|IEMOCAP_FOLDER]

A SER variant was trained once per fold (stage 5); by default the class probabilities of all fold
models are averaged (an ensemble), ``--fold`` picks one. Everything is read from the experiment
folder; nothing is downloaded. Audio of any sample rate or channel count is resampled to 16 kHz
mono. A recording longer than ``--max-seconds`` is split into windows whose probabilities are
averaged (weighted by duration) and whose transcripts are joined, or refused (``--long refuse``).
A file that cannot be read gets its own error row; the exit code is 1 if any file failed.

Inference streams: windows are read one at a time (``load_audio(path, start, end)``) and run in
batches of at most ``--batch-size`` windows (of one file or of several), and each file keeps only its
running duration-weighted probability sum and transcript pieces, so memory does not grow with the
length of a recording. Each ASR model runs once per window: one forward gives the SER variant its
layer and the transcript decoder its input (DeepSpeech2's CTC logits, the LAS listener output). The
transcript comes from the first fold's ASR model (the pretrained one, or that fold's adapted one),
decoded with the experiment's own ``beam_size`` and ``decode_ctc_weight``: those of stage 3's
configuration for an adapted model (``adapt/hyperparams.yaml``), else of stage 2's
(``asr/hyperparams.yaml``), else 4 and 0.5; ``--beam-size`` and ``--ctc-weight`` override them.

IAAN variants read the dialog context they were trained with: the previous turn of the same speaker
and of the interlocutor, found in ``--context`` (a CSV ``path,speaker,dialog,order`` or an
IEMOCAP-style folder, :mod:`ser_modules.data.dialog`). Without it they fall back to zero context, and the
``context`` column and the summary line say so.

The recognizer and its parts: :mod:`ser_modules.inference` (:class:`EmotionRecognizer` is imported here,
where the documentation above names it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import pandas as pd

from ser_modules.inference.recognizer import EmotionRecognizer
from ser_modules.utils.fileio import ManifestError, write_csv, write_text
from ser_modules.utils.hparams import HparamsError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".sph", ".mp3", ".aiff", ".aif")


def find_audio(paths: list[str]) -> list[str]:
    """Files as given, folders expanded (recursively, sorted) to their audio files."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for folder, _, files in sorted(os.walk(p)):
                out += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(AUDIO_EXTENSIONS)]
        else:
            out.append(p)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Emotion and transcript for audio files with a trained experiment")
    parser.add_argument("exp_dir", help="experiment folder (after stages 1-5, ideally 6) or an exported model folder")
    parser.add_argument("audio", nargs="+", help="audio files or folders")
    parser.add_argument("--out", default=None, help="results.csv or results.json (default: print a table)")
    parser.add_argument("--variant", default=None, help="SER variant (default: the best UA in results.csv)")
    parser.add_argument("--fold", default=None, help="one fold's model (default: average all folds)")
    parser.add_argument("--run", type=int, default=None, help="the run's models (default 0; an export holds one)")
    parser.add_argument("--decoder", default="greedy", choices=["greedy", "beam", "joint"],
                        help="transcript decoding; joint: CTC/attention beam search (a LAS with a CTC head)")
    parser.add_argument("--beam-size", type=int, default=None,
                        help="beam size of --decoder beam/joint (default: the experiment's beam_size, else 4)")
    parser.add_argument("--ctc-weight", type=float, default=None,
                        help="CTC weight of --decoder joint (default: the experiment's decode_ctc_weight, else 0.5)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longer recordings are split or refused")
    parser.add_argument("--long", default="split", choices=["split", "refuse"])
    parser.add_argument("--context", default=None,
                        help="IAAN's dialog context: a CSV path,speaker,dialog,order or an IEMOCAP-style folder")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        rec = EmotionRecognizer.load(args.exp_dir, args.variant, args.fold, args.run, args.device,
                                                decoder=args.decoder, max_seconds=args.max_seconds, long=args.long,
                                                context=args.context, beam_size=args.beam_size,
                                                ctc_weight=args.ctc_weight)
    except (ManifestError, HparamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = find_audio(args.audio)
    rows = rec.predict_files(files, args.batch_size, progress=len(files) > 1)
    frame = pd.DataFrame(rows)
    if args.out and args.out.endswith(".json"):
        write_text(args.out, json.dumps(rows, indent=2) + "\n")
    elif args.out:
        write_csv(args.out, frame)
    else:
        print(frame.to_string(index=False))
    failed = int((frame["status"] != "ok").sum()) if len(frame) else 0
    print(f"{rec.variant} ({len(rec.folds)} fold model(s)): {len(rows) - failed} file(s) ok, {failed} failed; "
          f"{rec.last_audio_seconds:.1f} s of audio, real-time factor {rec.last_rtf:.3f}; {rec.decoding_summary()}",
          file=sys.stderr)
    if "context" in frame.columns:
        notes = frame.loc[frame["status"] == "ok", "context"].value_counts().to_dict()
        print("IAAN dialog context: " + ", ".join(f"{n} file(s) {k}" for k, n in notes.items())
              + ("" if args.context else "; give --context (turns.csv or an IEMOCAP-style folder) to use the "
                 "previous turns, as in training"), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
