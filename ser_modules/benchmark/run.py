"""How fast the toolkit trains, against this machine's own limit.

    python -m ser_modules.benchmark [--device cpu|cuda] [--quick] [--scaling] --out DIR

1. The machine's GEMM rate: fp32 (and bf16 on a GPU) square matrix products.
2. A training step of every model at demo and paper size (DS2 and LAS of stage 2, the SER models of
   stage 5), driven through the same ``Brain.fit_batch`` the recipes run, on padded batches built
   the way training builds them (length-bucketed, from utterance durations drawn like IEMOCAP's).
   Each row gives frames/s, utterances/s, the achieved FLOP rate from the models' analytic counts
   (:mod:`ser_modules.models.flops`: valid frames only, training = 3 x forward), its ratio to the
   GEMM rate and the step's peak memory.
3. Stage 4's dump rate (x real time) and stage 5's time per epoch when the SER model reads stored
   representations versus recomputing the ASR layers for every batch.
4. ``--scaling``: wall time and peak memory (the process tree's RSS) of stages 4 and 5 on the demo
   emotion corpus replicated 1x, 2x, 4x and 8x.
5. ``--upstreams [PATH ...]`` (alone): stage 4 with pretrained upstreams on 3-5 s utterances, per format
   (base-size Whisper in 30 s and in utterance windows, wav2vec2-base with group norm, one utterance at a
   time, and layer-norm style, batched; random weights, the same computation) and each PATH given (a
   real upstream, as ``--upstream`` of upstream_probe): seconds of audio per second, FLOP rate, ratio.
6. ``--prep-scale [FILES ...]`` (alone): stage 1's ASR preparation, every audio file checked, on
   generated LibriSpeech trees of 10k and 100k short files: time per 10k files and peak memory.

Writes ``benchmark.csv`` (``model,size,device,batch,frames_per_s,gflops,gemm_gflops,ratio,peak_mb``
and more), ``benchmark.md`` and ``benchmark.png`` (and ``scaling.csv`` / ``scaling.png``) to ``--out``.
Model sizes, batch sizes and optimisers are read from the recipes' ``conf/`` (paper) and
``conf/demo/`` (demo) files, so the numbers describe what the recipes train. It is a measurement,
not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import pandas as pd
import torch

from ser_modules.benchmark.machine import gemm_rate, gru_kernel_name
from ser_modules.benchmark.stage_rates import (
    base_upstreams,
    dump_rates,
    prep_scale,
    scaling,
    stored_vs_recomputed,
    upstream_rates,
)
from ser_modules.benchmark.steps import COLUMNS, recipe_conf, asr_case, iemocap_like_durations, measure, ser_case

# ----------------------------------------------------------------------------------------------
# Reports


def markdown(frame: pd.DataFrame) -> str:
    from ser_modules.report.formatting import markdown_table

    return markdown_table(frame)


def plot_ratios(frame: pd.DataFrame, path: str) -> str:
    from ser_modules.report import plots

    return plots.plot_benchmark(frame, path)


def run(out: str, device: str = "cpu", quick: bool = False, sizes=("demo", "paper"), with_scaling: bool = False,
        models: list[str] | None = None) -> pd.DataFrame:
    from ser_modules.utils.environment import environment
    from ser_modules.utils.fileio import write_csv, write_text

    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ser_benchmark_")
    started = time.perf_counter()
    try:
        gemm = gemm_rate(device, seconds=0.5 if quick else 2.0)
        extra = {"gemm_bf16_gflops": round(gemm_rate(device, torch.bfloat16), 1)} if device.startswith("cuda") else {}
        print(f"GEMM fp32: {gemm:.1f} GFLOP/s on {device} ({torch.get_num_threads()} threads)", flush=True)
        gru = gru_kernel_name(device)
        print(f"GRU layers run on: {gru}", flush=True)
        durations = iemocap_like_durations(512)
        rows, asr = [], {}
        for size in sizes:
            for recipe in ("ctc_transfer", "las_adapt"):
                case, info = asr_case(recipe, size, device, tmp, quick)
                asr[(case.model, size)] = info
                if models and case.model not in models:
                    continue
                rows.append({**measure(case, durations, device, gemm, quick), "gru_kernel": gru})
                print(_line(rows[-1]), flush=True)
            for recipe, name in (("ctc_transfer", "ds2"), ("las_adapt", "las")):
                ser_hp = recipe_conf(recipe, "ser", size, tmp)
                seen = set()
                for v in ser_hp["variants"]:
                    if (v["type"] in seen or (models and v["type"] not in models) or v["type"] == "reference"
                            or v.get("task", "categorical") != "categorical" or v.get("finetune_blocks")):
                        continue
                    seen.add(v["type"])
                    case = ser_case(v, ser_hp, asr[(name, size)]["model"].layer_sizes, size, device, quick)
                    rows.append({**measure(case, durations, device, gemm, quick), "gru_kernel": gru})
                    print(_line(rows[-1]), flush=True)
        frame = pd.DataFrame(rows)
        frame = frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]
        write_csv(os.path.join(out, "benchmark.csv"), frame)
        stage_rows = dump_rates(asr, device, tmp, quick)
        stage_rows += stored_vs_recomputed(asr, recipe_conf("ctc_transfer", "ser", "demo", tmp), device, tmp, quick)
        for r in stage_rows:
            print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)
        stages = pd.DataFrame(stage_rows)
        write_csv(os.path.join(out, "stages.csv"), stages)
        plot_ratios(frame, os.path.join(out, "benchmark.png"))
        env = environment()
        md = ["# Benchmark", "", f"Device {device}, {torch.get_num_threads()} threads, torch {env['torch']}, "
              f"{env['platform']}, git {env['git_commit']}, {env['date']}. GRU layers: {gru}. GEMM fp32 {gemm:.1f} GFLOP/s"
              + (f", bf16 {extra['gemm_bf16_gflops']} GFLOP/s" if extra else "") + ".", "",
              "Training steps (`ratio` = achieved FLOP rate / GEMM rate; FLOPs counted on valid frames, "
              "training = 3 x forward; `peak_mb` above the memory in use before the step):", "",
              markdown(frame), "", "Stages 4 and 5:", "", markdown(stages.astype(object).fillna("")), ""]
        if with_scaling:
            scale = scaling(out)
            write_csv(os.path.join(out, "scaling.csv"), scale)
            from ser_modules.report import plots

            plots.plot_scaling(scale, os.path.join(out, "scaling.png"))
            md += ["Scaling of stages 4 and 5 with the corpus replicated (peak RSS of the process tree):", "",
                   markdown(scale), ""]
        md += [f"Benchmark time {time.perf_counter() - started:.0f} s.", ""]
        write_text(os.path.join(out, "benchmark.md"), "\n".join(md))
        print(f"benchmark written to {out} in {time.perf_counter() - started:.0f} s")
        return frame
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upstreams_main(args) -> int:
    """``--upstreams``: :func:`upstream_rates` of the base-size upstreams and of each PATH, to ``--out``."""
    from ser_modules.upstreams.loading import load_upstream
    from ser_modules.utils.environment import environment
    from ser_modules.utils.fileio import write_csv, write_text

    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ser_benchmark_")
    try:
        gemm = gemm_rate(args.device, seconds=0.5 if args.quick else 2.0)
        print(f"GEMM fp32: {gemm:.1f} GFLOP/s on {args.device} ({torch.get_num_threads()} threads)", flush=True)
        models = base_upstreams()
        for path in args.upstreams:
            name = f"{os.path.basename(os.path.normpath(path))} (--upstream)"
            models[name] = load_upstream(path, args.device, whisper_window=args.whisper_window)
        frame = pd.DataFrame(upstream_rates(models, gemm, tmp, args.quick, args.device))
        write_csv(os.path.join(args.out, "upstreams.csv"), frame)
        env = environment()
        write_text(os.path.join(args.out, "upstreams.md"), "\n".join([
            "# Stage 4 with pretrained upstreams", "", f"Device {args.device}, {torch.get_num_threads()} threads, "
            f"torch {env['torch']}, git {env['git_commit']}, {env['date']}. GEMM fp32 {gemm:.1f} GFLOP/s. 3-5 s "
            "utterances, batches of 8, every layer stored; FLOPs counted with padding (what the machine did).", "",
            markdown(frame), ""]))
        print(frame.to_string(index=False))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _line(row: dict) -> str:
    return (f"{row['model']:<28} {row['size']:<5} batch {row['batch']:>3}: {row['frames_per_s']:>9.0f} frames/s "
            f"{row['gflops']:>7.2f} GFLOP/s ratio {row['ratio']:.3f} peak {row['peak_mb']:.0f} MB "
            f"({row['step_ms']:.0f} ms/step)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for benchmark.csv, benchmark.md, benchmark.png")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller paper-size batches (< 3 min on 2 cores)")
    parser.add_argument("--scaling", action="store_true", help="also time stages 4-5 on the demo corpus x1, x2, x4, x8")
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these: ds2 las baseline mp rnn progressive iaan (default all)")
    parser.add_argument("--prep-scale", type=int, nargs="*", default=None, metavar="FILES",
                        help="only stage 1's preparation of generated LibriSpeech trees of these many files "
                             "(default 10000 100000): time per 10k files and peak memory")
    parser.add_argument("--nj", type=int, default=2, help="processes of --prep-scale's audio check")
    parser.add_argument("--upstreams", nargs="*", default=None, metavar="PATH",
                        help="only stage 4 with pretrained upstreams: base-size ones of each format (random "
                             "weights) and these upstream folders or checkpoints; audio s/s and FLOP rate")
    parser.add_argument("--whisper-window", default="utterance", choices=["30s", "utterance"],
                        help="the window of a Whisper given to --upstreams (default utterance)")
    args = parser.parse_args(argv)
    if args.upstreams is not None:
        return upstreams_main(args)
    if args.prep_scale is not None:
        os.makedirs(args.out, exist_ok=True)
        print(prep_scale(args.out, args.prep_scale or (10_000, 100_000), args.nj).to_string(index=False))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    run(args.out, args.device, args.quick, args.sizes, args.scaling, args.models)
    return 0

