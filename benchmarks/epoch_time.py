"""Replaced by ``topo-ep bench``; kept so that the commands of older reports still run.

Usage (the options are those of ``topo-ep bench``)::

    python benchmarks/epoch_time.py topologies/fre_2x512.yaml --batches 10 --repeats 5

forwards to ``topo-ep bench`` and, without ``--json``, writes the JSON to
``benchmarks/results/epoch_time_<topology>.json`` as before. The JSON is ``topo-ep bench``'s
document (the per-method entries are still under ``methods``, with the same three timing keys).
"""

from __future__ import annotations

import sys
from pathlib import Path

from topo_ep.cli import main


def forwarded(argv: list[str]) -> list[str]:
    """``topo-ep bench`` arguments for the script's ``argv``."""
    args = ["bench", *argv]
    if "--json" not in argv and any(not a.startswith("-") for a in argv):
        topology = next(a for a in argv if not a.startswith("-"))
        default = Path(__file__).parent / "results" / f"epoch_time_{Path(topology).stem}.json"
        args += ["--json", str(default)]
    return args


if __name__ == "__main__":
    sys.exit(main(forwarded(sys.argv[1:])))
