"""Export a trained SER variant as a self-contained folder that loads without its experiment.

Command line::

    python -m ser_modules.export EXP --out DIR [--variant NAME] [--folds all|N] [--run 0]

What the folder holds and how it is verified: :mod:`ser_modules.inference.export`.
:class:`ExportPretrainer` is imported here because every exported ``hyperparams.yaml`` names it by
this path.
"""

from __future__ import annotations

import argparse
import os
import sys

from ser_modules.inference.export import export_variant
from ser_modules.inference.hub_interface import ExportPretrainer  # noqa: F401 (the path exports name)
from ser_modules.utils.fileio import ManifestError
from ser_modules.utils.hparams import HparamsError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export a trained SER variant as a self-contained folder")
    parser.add_argument("exp_dir", help="experiment folder (after stage 6)")
    parser.add_argument("--out", required=True, help="the export folder (new)")
    parser.add_argument("--variant", default=None, help="SER variant (default: the best UA in results.csv)")
    parser.add_argument("--folds", default="all", help="all (the ensemble inference averages) or N: the first N folds")
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--no-upstream-weights", action="store_true",
                        help="reference a pretrained upstream's folder (by path and file digests) instead of copying it")
    args = parser.parse_args(argv)
    try:
        manifest = export_variant(args.exp_dir, args.out, args.variant, args.folds, args.run,
                                  upstream_weights=not args.no_upstream_weights)
    except (ManifestError, HparamsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in manifest["files"])
    print(f"exported {manifest['variant']} to {args.out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
