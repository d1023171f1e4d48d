"""Stage 3 of upstream_probe: optional CTC adaptation of the upstreams (conf/adapt.yaml ``ctc_head``).

Off by default (the SUPERB protocol keeps the upstream frozen): the stage says so in one line.
``ctc_head: True`` (a CTC head fine-tuned on the emotion corpus transcripts) is not implemented yet
and stops the stage with one line saying so.
"""

from __future__ import annotations

from ser_modules.fileio import ManifestError, run_main
from ser_modules.hparams import load_stage_hparams
from ser_modules.stages.common import parse_stage_args, stage_logging, stage_parser


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__.split("\n\n")[0]), argv)
    log = stage_logging(args.exp_dir, "stage3_adapt")
    hp, _ = load_stage_hparams(args.conf_dir, "adapt", args.size, {"seed": args.seed}, args.overrides)
    if hp["ctc_head"]:
        raise ManifestError(f"{args.conf_dir}/adapt.yaml: ctc_head: True (CTC adaptation of an upstream on the "
                            "emotion corpus transcripts) is not implemented yet; set adapt.ctc_head=False")
    log.info("stage 3: no adaptation (ctc_head: False): the upstreams stay frozen, as in SUPERB")


if __name__ == "__main__":
    run_main(main, "stage3_adapt")
