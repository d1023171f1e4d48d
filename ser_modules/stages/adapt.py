"""Stage entry point `adapt`: arrives with issue #4; the runner's interface is already fixed."""

from ser_modules.stages.common import parse_stage_args, stage_logging, stage_parser


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__), argv)
    stage_logging(args.exp_dir, "adapt").warning("stage adapt is not implemented yet (issue #4): skipped")


if __name__ == "__main__":
    main()
