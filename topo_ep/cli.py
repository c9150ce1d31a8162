"""The ``topo-ep`` command line.

Every subcommand lives in a small function ``_cmd_<name>(args) -> int``. Errors caused by user
input (:class:`~topo_ep.errors.TopoEpError`) are printed without a traceback and give exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from topo_ep.errors import TopoEpError


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field by dotted path, e.g. training.lr=1e-3 or feedback_gain=0.1 "
        "(the gain of every feedback edge); repeatable",
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    from topo_ep.loader import load_topology

    spec = load_topology(args.file, overrides=args.overrides)
    print(
        f"{args.file}: ok ({spec.name}: {len(spec.layers)} hidden layers, "
        f"{len(spec.edges)} edges)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topo-ep",
        description="Graph-declared recurrent networks trained with Equilibrium Propagation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a topology file")
    p.add_argument("file")
    _add_set_option(p)
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TopoEpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
