"""The ``generate:`` shorthand: families of layered networks expanded at load time.

A topology may give ``generate: {family: chain, depth: 10, width: 64, gain: 0.1}`` instead of
``layers`` and ``edges``. :func:`expand_generate` writes the layers ``h1 .. hL`` and their
edges, fills in ``readout`` keys the user left out, and records the (completed) block as
``origin: {generate: {...}}`` so a dumped spec still says where it came from.

Families (L = depth):

``chain``
    ``input->h1`` forward; for k = 1..L-1 ``h_k->h_{k+1}`` forward (gain 1) and
    ``h_{k+1}->h_k`` feedback with ``gain``.
``residual``
    The chain plus bidirectional skips every ``skip_every`` (default 3) layers:
    ``h_{1+s i} -> h_{1+s(i+1)}`` kind skip (learned, gain 1) and its feedback partner with
    ``gain``; depth 10: 1<->4, 4<->7, 7<->10; depth 20: 1<->4 ... 16<->19.
``agt``
    Arbitrary graph topology: the chain plus random links. ``random.Random(seed)`` draws one
    number per ordered pair (i, j) of hidden layers with |i - j| > 1, visiting i = 1..L in the
    outer loop and j = 1..L in the inner loop; the pair gets a link when the number is below
    ``probability``. For i < j the link is a learned skip ``h_i->h_j``; for i > j it is a
    random feedback edge ``h_i->h_j`` with ``gain``. ``links: paired`` (the default) gives every
    skip ``h_i->h_j`` a random feedback partner ``h_j->h_i`` too (and a drawn i > j link that
    coincides with a partner adds nothing); ``links: directed`` adds only the drawn links, each
    ordered pair on its own (the authors' AGT notebooks). Every feedback matrix is fixed random,
    so ``feedback`` must be ``random``.

``feedback`` (tied or random; default tied, random for agt) applies to every feedback edge and
is the default of ``readout.feedback``. ``readout`` defaults to ``{from: hL, size: 10}``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from topo_ep.errors import Location
from topo_ep.fields import MAX_EDGES, FieldChecker
from topo_ep.spec import ACTIVATIONS, FEEDBACK_MODES, INPUT

FAMILIES = ("chain", "residual", "agt")
#: Deepest generated network accepted.
MAX_DEPTH = 1000
#: Keys every family accepts.
COMMON_KEYS = ("family", "depth", "width", "gain", "activation", "feedback")
#: Keys only one family accepts.
FAMILY_KEYS = {
    "chain": (),
    "residual": ("skip_every",),
    "agt": ("probability", "seed", "links"),
}
#: How the agt family turns a drawn forward link into edges (see the module docstring).
AGT_LINKS = ("paired", "directed")
#: Readout classes when the user gives none.
DEFAULT_CLASSES = 10
_PATH = ("generate",)


def _settings(check: FieldChecker, block: Any) -> dict[str, Any]:
    """Validated generate block with every default filled in."""
    every = COMMON_KEYS + tuple(key for keys in FAMILY_KEYS.values() for key in keys)
    data = check.mapping(block, _PATH, every, ("family", "depth", "width"), "generate block")
    family = check.get(data, _PATH, "family", lambda v, p: check.choice(v, p, FAMILIES))
    for key in data:
        if key not in COMMON_KEYS and key not in FAMILY_KEYS[family]:
            owner = next(name for name, keys in FAMILY_KEYS.items() if key in keys)
            raise check.error(
                "unknown-key",
                f"'{key}' applies only to family {owner}, not {family}",
                _PATH + (key,),
                True,
            )
    default_feedback = "random" if family == "agt" else "tied"
    out: dict[str, Any] = {
        "family": family,
        "depth": check.get(data, _PATH, "depth", lambda v, p: check.integer(v, p, 1, MAX_DEPTH)),
        "width": check.get(data, _PATH, "width", check.size),
        "gain": check.get(
            data, _PATH, "gain", lambda v, p: check.number(v, p, minimum=0.0, kind="gain"), 0.1
        ),
        "activation": check.get(
            data, _PATH, "activation", lambda v, p: check.choice(v, p, ACTIVATIONS), "tanh"
        ),
        "feedback": check.get(
            data,
            _PATH,
            "feedback",
            lambda v, p: check.choice(v, p, FEEDBACK_MODES),
            default_feedback,
        ),
    }
    if family == "agt" and out["feedback"] != "random":
        raise check.error(
            "invalid-value",
            "family agt has fixed random feedback on every edge; 'feedback' must be random",
            _PATH + ("feedback",),
        )
    if family == "residual":
        out["skip_every"] = check.get(
            data, _PATH, "skip_every", lambda v, p: check.integer(v, p, 2, MAX_DEPTH), 3
        )
    if family == "agt":
        out["probability"] = check.get(data, _PATH, "probability", _probability(check), 0.2)
        out["seed"] = check.get(
            data, _PATH, "seed", lambda v, p: check.integer(v, p, 0, 2**63 - 1), 0
        )
        out["links"] = check.get(
            data, _PATH, "links", lambda v, p: check.choice(v, p, AGT_LINKS), "paired"
        )
    return out


def _probability(check: FieldChecker) -> Any:
    def parse(value: Any, path: tuple) -> float:
        number = check.number(value, path, minimum=0.0)
        if number > 1.0:
            raise check.error("absurd-number", f"{number} is a probability; expected 0 to 1", path)
        return number

    return parse


def _forward(source: str, target: str, kind: str = "forward") -> dict[str, Any]:
    return {"source": source, "target": target, "kind": kind, "gain": 1.0}


def _feedback(source: str, target: str, gain: float, mode: str) -> dict[str, Any]:
    return {"source": source, "target": target, "kind": "feedback", "gain": gain, "feedback": mode}


class TooManyEdges(Exception):
    """A generate block would make more than :data:`topo_ep.fields.MAX_EDGES` edges."""


def generate_edges(settings: Mapping[str, Any], most: int = MAX_EDGES) -> list[dict[str, Any]]:
    """Edge mappings of a completed generate block (see the module docstring).

    Raises
    ------
    TooManyEdges
        As soon as more than ``most`` edges have been made (so a huge block costs little).
    """
    depth, gain, mode = settings["depth"], settings["gain"], settings["feedback"]
    names = [f"h{k}" for k in range(1, depth + 1)]
    edges = [_forward(INPUT, names[0])]
    for lower, upper in zip(names, names[1:], strict=False):
        edges.append(_forward(lower, upper))
        edges.append(_feedback(upper, lower, gain, mode))
    family = settings["family"]
    if family == "residual":
        step = settings["skip_every"]
        for low in range(0, depth - step, step):
            high = low + step
            edges.append(_forward(names[low], names[high], "skip"))
            edges.append(_feedback(names[high], names[low], gain, mode))
    elif family == "agt":
        rng = random.Random(settings["seed"])
        present = {(edge["source"], edge["target"], edge["kind"]) for edge in edges}
        for i in range(depth):
            for j in range(depth):
                if abs(i - j) <= 1:
                    continue
                if rng.random() >= settings["probability"]:
                    continue
                if len(edges) > most:
                    raise TooManyEdges
                if i < j:
                    edges.append(_forward(names[i], names[j], "skip"))
                    if settings["links"] == "paired":
                        edges.append(_feedback(names[j], names[i], gain, "random"))
                        present.add((names[j], names[i], "feedback"))
                elif (names[i], names[j], "feedback") not in present:
                    edges.append(_feedback(names[i], names[j], gain, "random"))
                    present.add((names[i], names[j], "feedback"))
    if len(edges) > most:
        raise TooManyEdges
    return edges


def expand_generate(
    data: dict[str, Any], positions: dict[tuple, Location] | None = None
) -> dict[str, Any]:
    """Expand a ``generate:`` block into ``layers``, ``edges``, ``readout`` and ``origin``.

    Parameters
    ----------
    data
        Plain topology data. Returned unchanged (as a shallow copy) without a ``generate`` key.
    positions
        Path -> location map of ``data``; updated in place so that generated fields point at
        the ``generate:`` node.

    Returns
    -------
    dict
        A new mapping without ``generate`` and with ``origin: {generate: <completed block>}``.

    Raises
    ------
    TopologyError
        Errors in the block, or ``layers``/``edges``/``origin`` given alongside it.
    """
    result = dict(data)
    if "generate" not in result:
        return result
    check = FieldChecker(positions, "<dict>")
    for key in ("layers", "edges", "origin"):
        if key in result:
            raise check.error(
                "invalid-value",
                f"'{key}' cannot be given together with 'generate', which creates the "
                "layers and edges; remove one of them",
                (key,),
                True,
            )
    settings = _settings(check, result.pop("generate"))
    names = [f"h{k}" for k in range(1, settings["depth"] + 1)]
    result["layers"] = [
        {"name": name, "size": settings["width"], "activation": settings["activation"]}
        for name in names
    ]
    try:
        result["edges"] = generate_edges(settings)
    except TooManyEdges:
        raise check.error(
            "absurd-number",
            f"this block makes more than {MAX_EDGES} edges, the bound that declared edges have "
            "too; lower the depth or the probability",
            _PATH,
        ) from None
    readout = result.get("readout", {})
    if isinstance(readout, Mapping):
        defaults = {"from": names[-1], "size": DEFAULT_CLASSES, "feedback": settings["feedback"]}
        result["readout"] = {**defaults, **readout}
    result["origin"] = {"generate": settings}
    if positions is not None:
        here = check.location(_PATH)
        for key in ("layers", "edges", "origin"):
            positions[(key,)] = here
        positions.setdefault(("readout",), here)
    return result
