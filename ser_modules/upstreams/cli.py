"""``--upstream PATH [--upstream-arch A]`` options, and the check ``run.sh`` makes before stage 1::

    python -m ser_modules.upstreams check --upstream PATH [--upstream-arch A] ...
"""

from __future__ import annotations

import argparse

from ser_modules.upstreams.formats import check_upstream
from ser_modules.utils.fileio import ManifestError


class _ArchOfLastUpstream(argparse.Action):
    """``--upstream-arch A`` belongs to the ``--upstream`` before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        given = getattr(namespace, "upstream", None) or []
        if not given:
            parser.error(f"{option_string} {value}: comes after the --upstream it describes")
        if given[-1][1] is not None:
            parser.error(f"{option_string} {value}: --upstream {given[-1][0]} already has --upstream-arch {given[-1][1]}")
        given[-1] = (given[-1][0], value)


class _Upstream(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, "upstream", [*(getattr(namespace, "upstream", None) or []), (value, None)])


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    """``--upstream PATH [--upstream-arch A]`` (repeatable) -> ``args.upstream``: ``[(path, arch or None)]``."""
    parser.add_argument("--upstream", action=_Upstream, default=[], metavar="PATH",
                        help="an upstream: a transformers or SpeechBrain folder, an openai-whisper .pt or a torchaudio "
                             ".pth checkpoint (repeatable)")
    parser.add_argument("--upstream-arch", action=_ArchOfLastUpstream, metavar="BUNDLE|PARAMS.json",
                        help="the architecture of the torchaudio checkpoint of the --upstream before it: a "
                             "torchaudio.pipelines bundle name or a JSON of wav2vec2_model parameters")


def main(argv=None) -> int:
    """``python -m ser_modules.upstreams check --upstream PATH [--upstream-arch A] ...``: one line per bad one."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: python -m ser_modules.upstreams check --upstream PATH [--upstream-arch A] ...", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m ser_modules.upstreams check")
    add_upstream_arguments(parser)
    bad = 0
    for path, arch in parser.parse_args(argv[1:]).upstream:
        try:
            check_upstream(path, arch)
        except ManifestError as err:
            print(f"error: {err}", file=sys.stderr)
            bad += 1
    return 2 if bad else 0

