"""Feedback gains from a target spectral radius: ``feedback_gain: {spectral_radius: r}``.

The compiled network scales every declared feedback gain by one c with rho(F + c B) = r
(:mod:`topo_ep.gain_radius`). Checked here: ``topo-ep compile`` hits the target to 1e-3 on the
paper's deep nets, the gains it prints give that radius on a network compiled independently,
the sqrt law is exact where the layer graph is graded (and only there) and agrees with the
bracketed solve, unreachable targets and bad fields are clear errors, and the scale solved
after every epoch goes into the metrics and the checkpoint with resume still bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from topo_ep import gain_radius, spectral
from topo_ep.analysis.inputs import load_network
from topo_ep.analysis.operator import operator_spectrum
from topo_ep.checkpoint import load_checkpoint, save_atomic
from topo_ep.cli import main
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.errors import CheckpointError, TopoEpError, TopologyError
from topo_ep.evaluate import evaluate_checkpoint
from topo_ep.loader import dump_topology, load_topology, loads_topology, save_topology
from topo_ep.train import RunSettings, Trainer
from topo_ep.validate import spec_from_dict

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"
F64 = torch.float64


def _target(radius: float, every_epoch: bool = False) -> str:
    return f"feedback_gain={{spectral_radius: {radius}, every_epoch: {str(every_epoch).lower()}}}"


def _printed_gains(output: str) -> dict[float, float]:
    """Declared feedback gain -> the gain chosen, from ``topo-ep compile``'s output."""
    pairs = re.findall(r"declared gain (\S+) -> (\S+) \(\d+ feedback edges\)", output)
    return {float(declared): float(chosen) for declared, chosen in pairs}


# ---------------------------------------------------------------------------- compile
@pytest.mark.parametrize(
    ("name", "radius", "method"),
    [("chain_5x64", 0.3, "sqrt law"), ("res_10x64", 0.5, "secant"), ("agt_10x64", 0.3, "secant")],
)
def test_compile_hits_the_target_radius_and_prints_the_gains(name, radius, method, capsys):
    path = TOPOLOGIES / f"{name}.yaml"
    assert main(["compile", str(path), "--set", f"feedback_gain.spectral_radius={radius}"]) == 0
    output = capsys.readouterr().out
    reached = re.search(r"radius reached (\S+) \(relative error (\S+); ([a-z ]+), ", output)
    assert reached is not None, output
    assert abs(float(reached.group(1)) - radius) <= 1e-3 * radius
    assert float(reached.group(2)) <= 1e-3
    assert reached.group(3) == method
    # The printed gains, declared as plain gains on a network compiled independently (the same
    # seed, no target), give the target radius through spectral.spectral_radius.
    gains = _printed_gains(output)
    assert list(gains) == [0.1]
    plain = compile_topology(load_topology(path, [f"feedback_gain={gains[0.1]!r}"]), seed=0)
    assert plain.spec.feedback_gain is None
    measured = spectral.spectral_radius(plain)
    assert abs(measured - radius) <= 1e-3 * radius, measured
    # and the declared gain alone does not: the target moved the gains
    declared = spectral.spectral_radius(compile_topology(load_topology(path), seed=0))
    assert abs(declared - radius) > 0.05


def _chain(feedback: str = "tied", extra: str = "") -> str:
    return f"""
name: small
input: {{size: 5}}
layers:
  - {{name: h1, size: 6}}
  - {{name: h2, size: 7}}
  - {{name: h3, size: 5}}
  - {{name: h4, size: 6}}
readout: {{from: h4, size: 3}}
edges:
  - {{source: input, target: h1}}
  - {{source: h1, target: h2}}
  - {{source: h2, target: h3}}
  - {{source: h3, target: h4}}
  - {{source: h2, target: h1, kind: feedback, gain: 0.3, feedback: {feedback}}}
  - {{source: h3, target: h2, kind: feedback, gain: 0.1, feedback: {feedback}}}
  - {{source: h4, target: h3, kind: feedback, gain: 0.2, feedback: {feedback}}}
{extra}"""


SKIP = """  - {source: h1, target: h4, kind: skip}
  - {source: h4, target: h1, kind: feedback, gain: 0.1}
"""
DIAMOND = """
name: diamond
input: {size: 4}
layers:
  - {name: a, size: 5}
  - {name: b, size: 4}
  - {name: c, size: 6}
  - {name: d, size: 5}
readout: {from: d, size: 2}
edges:
  - {source: input, target: a}
  - {source: a, target: b}
  - {source: a, target: c}
  - {source: b, target: d}
  - {source: c, target: d}
  - {source: b, target: a, kind: feedback, gain: 0.2}
  - {source: c, target: a, kind: feedback, gain: 0.1, feedback: random}
  - {source: d, target: b, kind: feedback, gain: 0.3}
  - {source: d, target: c, kind: feedback, gain: 0.1, feedback: random}
"""


def _radii(net, scales) -> np.ndarray:
    operator = net.scaled_operator("exact")
    return np.array([operator.radius(c) for c in scales])


@pytest.mark.parametrize(
    ("text", "graded"),
    [
        (_chain("tied"), True),
        (_chain("random"), True),
        (DIAMOND, True),
        (_chain("tied", SKIP), False),
        ((TOPOLOGIES / "res_10x64.yaml").read_text("utf-8"), False),
        ((TOPOLOGIES / "agt_10x64.yaml").read_text("utf-8"), False),
    ],
    ids=["chain-tied", "chain-random", "diamond", "chain-with-skip", "res_10x64", "agt_10x64"],
)
def test_the_sqrt_law_is_exact_exactly_where_the_layer_graph_is_graded(text, graded):
    """rho(M(c)) = sqrt(c) rho(M(1)) for every c on graded layer graphs (a chain with tied or
    random feedback, a diamond); a skip over three layers or AGT links break it."""
    spec = loads_topology(text, "t.yaml")
    assert (gain_radius.layer_levels(spec.layer_names, spec.edges) is not None) == graded
    if len(spec.layers) > 4:  # the shipped deep nets: the level check is the point
        spec = loads_topology(text, "t.yaml", ["generate.width=8"])
    net = compile_topology(spec, seed=3, dtype=F64)
    scales = np.array([1e-4, 1e-2, 0.3, 1.0, 3.0, 50.0])
    ratios = _radii(net, scales) / np.sqrt(scales)
    spread = ratios.max() / ratios.min() - 1
    if graded:
        assert spread < 1e-9, ratios
    else:
        assert spread > 0.05, ratios


def test_levels_of_a_chain_count_the_layers_up():
    spec = loads_topology(_chain(), "t.yaml")
    assert gain_radius.layer_levels(spec.layer_names, spec.edges) == {
        "h1": 0,
        "h2": 1,
        "h3": 2,
        "h4": 3,
    }


@pytest.mark.parametrize("feedback", ["tied", "random"])
@pytest.mark.parametrize("radius", [0.05, 0.7, 2.5])
def test_sqrt_law_and_bracketed_solve_agree_on_a_chain(feedback, radius):
    net = compile_topology(loads_topology(_chain(feedback), "t.yaml"), seed=1, dtype=F64)
    operator = net.scaled_operator()
    common = {"largest_gain": 0.3, "label": "test"}
    law = gain_radius.solve_feedback_scale(operator, radius, graded=True, **common)
    general = gain_radius.solve_feedback_scale(operator, radius, graded=False, **common)
    assert (law.method, general.method) == ("sqrt law", "secant")
    assert law.evaluations == 2 <= general.evaluations
    assert law.scale == pytest.approx(general.scale, rel=1e-6)
    assert law.relative_error < 1e-9 and general.relative_error < 1e-6


def test_the_compiled_network_runs_the_scaled_gains_and_compiles_again_to_itself():
    spec = loads_topology(_chain("tied", SKIP), "t.yaml", [_target(0.8)])
    net = compile_topology(spec, seed=2, dtype=F64)
    c = net.feedback_scale
    assert net.gain_solution is not None and net.gain_solution.scale == c
    declared = {e.key: e.gain for e in spec.edges}
    for edge in net.spec.edges:
        expected = declared[edge.key] * (c if edge.kind == "feedback" else 1.0)
        assert edge.gain == expected
        assert net.block_of(edge.key).gain == expected
    assert spectral.spectral_radius(net) == pytest.approx(0.8, rel=1e-6)
    assert operator_spectrum(net).radius == pytest.approx(0.8, rel=1e-6)
    # net.spec holds the gains chosen and no target: compiling it again is the same network
    again = compile_topology(net.spec, seed=2, dtype=F64)
    assert again.feedback_scale is None
    assert torch.equal(again.hidden_operator(), net.hidden_operator())
    # a given scale is used as it is, without solving
    given = compile_topology(spec, seed=2, dtype=F64, feedback_scale=0.5)
    assert (given.feedback_scale, given.gain_solution) == (0.5, None)
    assert "c as given" in given.describe()


def test_the_ratios_of_the_declared_gains_are_kept():
    spec = loads_topology(_chain("random"), "t.yaml", [_target(0.4)])
    net = compile_topology(spec, seed=0, dtype=F64)
    gains = {e.key: e.gain for e in net.spec.edges if e.kind == "feedback"}
    assert gains["h2->h1:feedback"] / gains["h3->h2:feedback"] == pytest.approx(3.0, rel=1e-12)
    assert gains["h4->h3:feedback"] / gains["h3->h2:feedback"] == pytest.approx(2.0, rel=1e-12)


# ---------------------------------------------------------------------------- errors
NO_CYCLE = """
name: open
input: {size: 4}
layers:
  - {name: h1, size: 3}
  - {name: h2, size: 3}
  - {name: h3, size: 3}
readout: {from: h3, size: 2}
edges:
  - {source: input, target: h1}
  - {source: input, target: h2}
  - {source: h1, target: h3}
  - {source: h2, target: h3}
  - {source: h2, target: h1, kind: feedback, gain: 0.5, feedback: random}
feedback_gain: {spectral_radius: 0.5}
"""


def test_a_target_no_scale_reaches_is_a_clear_error(tmp_path, capsys):
    """The only feedback edge (h2 -> h1) closes no cycle: M(c) is nilpotent for every c."""
    path = tmp_path / "open.yaml"
    path.write_text(NO_CYCLE, encoding="utf-8")
    assert main(["compile", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: topology 'open': feedback_gain.spectral_radius = 0.5 cannot")
    assert "the radius is 0 at every scale: no feedback edge closes a cycle" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("graded", [True, False])
def test_a_target_beyond_the_largest_gain_is_an_error(graded):
    text = _chain("tied", "" if graded else SKIP)
    with pytest.raises(TopoEpError, match="grows to only .* largest feedback gain reaches 1e\\+06"):
        compile_topology(loads_topology(text, "t.yaml", [_target(1e9)]), dtype=F64)


def test_a_target_needing_a_scale_below_the_smallest_is_an_error_on_a_chain():
    spec = loads_topology(_chain(), "t.yaml", [_target(1e-200)])
    with pytest.raises(TopoEpError, match="needs a feedback scale of 0 .* below the smallest"):
        compile_topology(spec, dtype=F64)


def test_arpack_on_the_matrix_free_operator_agrees_with_the_exact_solve():
    spec = loads_topology(_chain("random", SKIP), "t.yaml", [_target(0.6)])
    net = compile_topology(spec, seed=4, dtype=F64)
    exact = net.gain_solution
    arpack = net.solve_feedback_scale(method="arpack")
    assert (exact.eigensolver, arpack.eigensolver) == ("exact", "arpack")
    assert arpack.scale == pytest.approx(exact.scale, rel=1e-6)
    assert net.feedback_scale == arpack.scale


def test_a_target_below_what_the_eigensolver_resolves_is_an_error():
    """Below a skip's c^(1/4) growth the radius at the smallest scale tried stays above."""
    spec = loads_topology(_chain("tied", SKIP), "t.yaml", [_target(1e-200)])
    with pytest.raises(TopoEpError, match="below what the eigensolver resolves"):
        compile_topology(spec, dtype=F64)


BASE = """name: bad
input: {size: 4}
layers:
  - {name: h1, size: 3}
  - {name: h2, size: 3}
readout: {from: h2, size: 2}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2}
"""
FEEDBACK = "  - {source: h2, target: h1, kind: feedback, gain: GAIN}\n"


RADIUS = ".spectral_radius"
BAD_FIELDS = [
    # (value of feedback_gain, gain of the feedback edge or None: no such edge, field, message)
    ("{spectral_radius: 0}", "0.1", RADIUS, "0.0 must be greater than 0"),
    ("{spectral_radius: -1}", "0.1", RADIUS, "must be greater than 0"),
    ("{spectral_radius: .nan}", "0.1", RADIUS, "not a finite number"),
    ("{spectral_raduis: 0.5}", "0.1", ".spectral_raduis", "did you mean 'spectral_radius'?"),
    ("{every_epoch: true}", "0.1", "", "'spectral_radius' is missing"),
    ("{spectral_radius: 0.5, every_epoch: 1}", "0.1", ".every_epoch", "expected true or false"),
    ("0.5", "0.1", "", "expected a feedback_gain mapping"),
    ("{spectral_radius: 0.5}", None, "", "has none"),
    ("{spectral_radius: 0.5}", "0", RADIUS, "every feedback edge has gain 0"),
]


@pytest.mark.parametrize(("value", "gain", "field", "message"), BAD_FIELDS)
def test_bad_feedback_gain_fields_name_file_line_column_and_field(
    tmp_path, capsys, value, gain, field, message
):
    edge = FEEDBACK.replace("GAIN", gain) if gain is not None else ""
    text = BASE + edge + f"feedback_gain: {value}\n"
    line, field = text.count("\n"), f"feedback_gain{field}"
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.match(re.escape(f"error: {path}:{line}:") + r"\d+: " + re.escape(field), err), err
    assert message in err
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert (info.value.line, info.value.field) == (line, field)


def test_without_feedback_the_message_says_why():
    with pytest.raises(TopologyError) as info:
        loads_topology(BASE + "feedback_gain: {spectral_radius: 0.5}\n", "b.yaml")
    assert "the hidden operator's spectral radius is 0 at every scale" in info.value.message


def test_the_target_round_trips_through_yaml_and_dict(tmp_path):
    spec = loads_topology(_chain(), "t.yaml", [_target(0.7, every_epoch=True)])
    assert spec.feedback_gain == gain_radius_spec(0.7, True)
    assert spec_from_dict(spec.to_dict()) == spec
    assert loads_topology(dump_topology(spec), "again.yaml") == spec
    path = tmp_path / "t.yaml"
    save_topology(spec, path)
    assert load_topology(path, ["feedback_gain.spectral_radius=0.2"]).feedback_gain == (
        gain_radius_spec(0.2, True)
    )


def gain_radius_spec(radius: float, every_epoch: bool):
    from topo_ep.spec import FeedbackGainSpec

    return FeedbackGainSpec(spectral_radius=radius, every_epoch=every_epoch)


# ---------------------------------------------------------------------------- training
QUICKSTART_TINY = [
    "layers.h1.size=16",
    "layers.h2.size=16",
    "training.batch_size=50",
    _target(0.6, every_epoch=True),
]
LIMIT = 200


def _trainer(spec, epochs: int, out: Path) -> Trainer:
    settings = RunSettings(method="ep", epochs=epochs, seed=0, device="cpu", limit=LIMIT)
    dataset = load_dataset("digits", seed=0, limit=LIMIT)
    return Trainer(spec, dataset, settings, out_dir=out, progress=False, log=lambda _: None)


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def every_epoch_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two epochs straight, and one epoch then a resume to two."""
    spec = load_topology(TOPOLOGIES / "quickstart.yaml", QUICKSTART_TINY)
    spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, epochs=2))
    root = tmp_path_factory.mktemp("gain-radius-runs")
    full, resumed = root / "full", root / "resumed"
    _trainer(spec, 2, full).run()
    _trainer(spec, 1, resumed).run()
    trainer = _trainer(spec, 2, resumed)
    trainer.resume(resumed)
    assert trainer.start_epoch == 2
    trainer.run()
    return full, resumed


def test_every_epoch_records_the_scale_and_the_radius_reached(every_epoch_runs):
    full, _ = every_epoch_runs
    records = _metrics(full)
    scales = [record["feedback_scale"] for record in records]
    for record in records:
        assert abs(record["spectral_radius"] - 0.6) <= 1e-3 * 0.6
    assert scales[0] != scales[1]  # the weights moved the radius, so the scale followed
    payload = load_checkpoint(full / "checkpoint.pt")
    assert payload["feedback_scale"] == scales[-1]
    # the network the checkpoint holds has the radius asked for, with the saved scale
    loaded = load_network(str(TOPOLOGIES / "quickstart.yaml"), QUICKSTART_TINY, str(full))
    assert loaded.net.feedback_scale == scales[-1] and loaded.net.gain_solution is None
    assert spectral.spectral_radius(loaded.net) == pytest.approx(0.6, rel=1e-3)


def test_every_epoch_resume_is_bit_identical(every_epoch_runs):
    full, resumed = every_epoch_runs
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["feedback_scale"] == b["feedback_scale"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _metrics(full)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _metrics(resumed)]


def test_evaluate_uses_the_saved_scale(every_epoch_runs):
    full, _ = every_epoch_runs
    report = evaluate_checkpoint(full, device="cpu")
    assert report.test_acc == _metrics(full)[-1]["test_acc"]


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, "big"])
def test_a_checkpoint_with_a_bad_scale_is_refused(every_epoch_runs, tmp_path, scale):
    full, _ = every_epoch_runs
    payload = load_checkpoint(full / "checkpoint.pt")
    payload["feedback_scale"] = scale
    save_atomic(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="'feedback_scale' must be a positive finite"):
        load_checkpoint(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize(
    ("function", "bracket", "root"),
    [
        (lambda u: 0.5 * (u - 0.2), (-5.0, 3.0), 0.2),  # the sqrt law: linear in u
        (lambda u: max(u - 1.0, 0.01 * (u - 1.0)), (-30.0, 2.0), 1.0),  # a kink, a flat side
        (lambda u: (u - 0.3) * (u - 2.0) * (u + 3.0) / 10.0, (0.0, 1.0), 0.3),
        (lambda u: math.copysign(abs(u - 0.7) ** 0.2, u - 0.7), (-1.0, 4.0), 0.7),  # steep
    ],
    ids=["linear", "kink", "cubic", "steep"],
)
def test_the_safeguarded_secant_finds_the_root_inside_its_bracket(function, bracket, root):
    calls = []

    def residual(u):
        calls.append(u)
        return function(u)

    a, b = bracket
    found = gain_radius._safeguarded_secant(residual, (a, function(a)), (b, function(b)))
    assert all(a <= u <= b for u in calls)
    assert abs(function(found)) <= gain_radius.RESIDUAL_XTOL or abs(found - root) <= 1e-9
    assert len(calls) < gain_radius.MAX_EVALUATIONS
