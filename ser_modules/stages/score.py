"""Stage entry point `score`: arrives with issue #6; the runner's interface is already fixed."""

from ser_modules.stages.common import parse_stage_args, stage_logging, stage_parser


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__), argv)
    stage_logging(args.exp_dir, "score").warning("stage score is not implemented yet (issue #6): skipped")


if __name__ == "__main__":
    main()
