"""Command line: ``unimmad <command>`` (also ``python -m unimmad <command>``)."""
from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from . import bench

    parser = argparse.ArgumentParser(
        prog="unimmad", description="UniMMAD anomaly detection: benchmarks and tools.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    p = sub.add_parser("bench", help="benchmark inference on generated inputs",
                       description=bench.__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
