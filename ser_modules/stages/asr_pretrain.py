"""Stage entry point `asr_pretrain`: arrives with issue #3; the runner's interface is already fixed."""

from ser_modules.stages.common import parse_stage_args, stage_logging, stage_parser


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__), argv)
    stage_logging(args.exp_dir, "asr_pretrain").warning("stage asr_pretrain is not implemented yet (issue #3): skipped")


if __name__ == "__main__":
    main()
