"""Arguments and set-up shared by the stage entry points."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ser_modules.utils.fileio import setup_logging
from ser_modules.utils.hparams import load_stage_hparams
from ser_modules.utils.jobs import default_jobs, job_devices, resolve_device, stop_on_sigterm


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--exp-dir", required=True, help="experiment folder")
    parser.add_argument("--data-dir", required=True, help="stage-1 output (emotion/ and asr/)")
    parser.add_argument("--conf-dir", required=True, help="the recipe's conf/ folder")
    parser.add_argument("--size", default="paper", choices=["demo", "paper"])
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--folds", default="loso", help="fold scheme: loso, lospk, lkso or emobox (EmoBox's published folds, stage 1 --emobox-dir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nj", type=int, default=0, help="parallel jobs (0: one per CPU core / GPU)")
    parser.add_argument("--ngpu", type=int, default=0,
                        help="GPUs sharing the jobs of stages 3-5: cuda:0..N-1 (0: every visible GPU; on a CPU, "
                             "at least N jobs)")
    return parser


def stage_jobs(args) -> tuple[int, list[str]]:
    """``(parallel jobs, devices)`` of a stage with independent jobs (stages 3-5): the GPUs of
    ``--device``/``--ngpu`` share them, one worker process per GPU unless ``--nj`` asks for more
    (:mod:`ser_modules.utils.jobs`); on a CPU, ``--nj`` processes (at least ``--ngpu``)."""
    devices = job_devices(args.device_request, args.ngpu)
    if devices[0].startswith("cuda"):
        return (args.nj if args.nj > 0 else len(devices)), devices
    return max(default_jobs(args.nj, args.device), args.ngpu), devices


def parse_stage_args(parser: argparse.ArgumentParser, argv=None):
    """Split ``argv`` at ``--``: options before, ``key=value`` overrides after."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    args = parser.parse_args(argv)
    args.overrides = overrides
    stop_on_sigterm()  # SIGTERM unwinds like Ctrl-C: workers are stopped, unfinished outputs stay aside
    args.device_request = args.device  # what cluster jobs resolve on their own node
    if getattr(args, "launcher", "pool") == "pool":  # a submitting host (a login node) decides nothing
        args.device = resolve_device(args.device)
    return args


def stage_logging(exp_dir: str, name: str) -> logging.Logger:
    setup_logging(os.path.join(exp_dir, "logs", f"{name}.log"))
    return logging.getLogger(name)


def stage_runner(args, out: str | None = None, data: str | None = None) -> dict:
    """The runner values a stage file gets: ``output_folder`` ``out`` (when given), ``data_folder``
    ``<data-dir>/<data>`` (when given) and ``--seed``."""
    runner = {"output_folder": out} if out else {}
    if data:
        runner["data_folder"] = os.path.join(args.data_dir, data)
    return {**runner, "seed": args.seed}


def start_stage(parser: argparse.ArgumentParser | str, name: str, conf: str, argv=None, folder: str | None = None,
                data: str | None = None):
    """The start of every stage's ``main()``: parse ``argv`` (``parser``, or a :func:`stage_parser`
    described by the first paragraph of the module docstring ``parser``), log to
    ``<exp>/logs/<name>.log``, and load ``<conf-dir>/<conf>.yaml`` with the overrides and the runner
    values of :func:`stage_runner` (``output_folder`` ``<exp>/<folder>``). Returns ``(args, logger,
    output folder or None, hparams, resolved yaml)``."""
    if isinstance(parser, str):
        parser = stage_parser(parser.split("\n\n")[0])
    args = parse_stage_args(parser, argv)
    log = stage_logging(args.exp_dir, name)
    out = os.path.join(args.exp_dir, folder) if folder else None
    hp, resolved = load_stage_hparams(args.conf_dir, conf, args.size, stage_runner(args, out, data), args.overrides)
    return args, log, out, hp, resolved
