"""Stage entry point `ser_train`: arrives with issue #5; the runner's interface is already fixed."""

from ser_modules.stages.common import parse_stage_args, stage_logging, stage_parser


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__), argv)
    stage_logging(args.exp_dir, "ser_train").warning("stage ser_train is not implemented yet (issue #5): skipped")


if __name__ == "__main__":
    main()
