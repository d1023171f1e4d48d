"""Stage 6: result tables, significance, confusion matrices and the papers' figures.

Reads the stored predictions of stage 5, ``asr_results.csv`` of stages 2-3 and the stage-4 stores;
writes ``<exp>/results.csv``, ``<exp>/RESULTS.md`` and ``<exp>/plots/*.png``, and with evaluation
corpora (``--eval-corpus``) ``<exp>/cross_corpus.csv`` and a cross-corpus table in RESULTS.md. It trains nothing,
so rerunning it alone regenerates everything in seconds.
"""

from __future__ import annotations

import os

from ser_modules.report.curves import curve_figures
from ser_modules.report.results import (
    print_scores,
    read_report,
    report_figures,
    results_markdown,
    score_cross_corpus,
    score_variants,
)
from ser_modules.stages.common import stage_runner, start_stage
from ser_modules.utils.fileio import run_main, write_csv, write_text
from ser_modules.utils.hparams import load_stage_hparams


def main(argv=None) -> None:
    args, log, _, hp, _ = start_stage(__doc__, "stage6_score", "score", argv)
    hp_ser, _ = load_stage_hparams(args.conf_dir, "ser", args.size, stage_runner(args, os.path.join(args.exp_dir, "ser")),
                                   args.overrides)
    report = read_report(args.exp_dir, args.data_dir, args.protocol, args.folds)
    write_csv(os.path.join(args.exp_dir, "results.csv"), score_variants(report, hp, hp_ser, log))
    cross = score_cross_corpus(report, args.data_dir, hp, hp_ser, log)
    cross_csv = os.path.join(args.exp_dir, "cross_corpus.csv")
    if len(cross):
        write_csv(cross_csv, cross)
    elif os.path.isfile(cross_csv):  # the run lists no evaluation corpus now: no stale table beside the results
        os.remove(cross_csv)
    figures = report_figures(report, hp)
    if hp.get("curves", True):  # every training's curves, for users without TensorBoard
        figures += curve_figures(args.exp_dir)
    write_text(os.path.join(args.exp_dir, "RESULTS.md"), results_markdown(report, hp, args.seed))
    print_scores(report.results)
    log.info("stage 6: %s, %s and %d figures written", os.path.join(args.exp_dir, "RESULTS.md"),
             os.path.join(args.exp_dir, "results.csv"), len(figures))


if __name__ == "__main__":
    run_main(main, "stage6_score")
