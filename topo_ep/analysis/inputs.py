"""What the analyses run on: a network (fresh or from a checkpoint) and a batch of data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.data import check_compatible, load_dataset
from topo_ep.errors import CheckpointError
from topo_ep.loader import load_topology
from topo_ep.train import DTYPES
from topo_ep.validate import spec_from_dict


@dataclass(frozen=True)
class LoadedNetwork:
    """A network to analyse and a line saying where it came from."""

    net: CompiledNetwork
    source: str
    dataset: str | None
    data_dir: str | None


def load_network(
    file: str,
    overrides: Sequence[str] = (),
    checkpoint: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
) -> LoadedNetwork:
    """The network of topology ``file`` (with ``--set`` overrides), fresh or trained.

    A fresh network is compiled with ``seed`` in ``dtype`` (default float32, the training
    default). With ``checkpoint``, the topology stored in the checkpoint is used (its weights fit
    it) and the dtype defaults to the one it was trained in.
    """
    spec = load_topology(file, overrides=overrides)
    if checkpoint is None:
        name = dtype or "float32"
        net = compile_topology(spec, seed=seed, dtype=DTYPES[name])
        return LoadedNetwork(net, f"fresh network from {file} (seed {seed})", None, None)
    payload = load_checkpoint(checkpoint)
    stored = spec_from_dict(payload["spec"], filename=f"{checkpoint} (stored topology)")
    settings = payload.get("settings", {})
    name = dtype or settings.get("dtype", "float32")
    net = compile_topology(
        stored, seed=0, dtype=DTYPES[name], feedback_scale=payload.get("feedback_scale")
    )
    try:
        # A block's int64 structure (a sparse mask) keeps its dtype.
        model = {
            k: v.to(DTYPES[name]) if v.is_floating_point() else v
            for k, v in payload["model"].items()
        }
        net.load_state_dict(model)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{checkpoint}: weights do not fit the stored topology ({exc})"
        ) from exc
    differs = "" if stored == spec else f"; its stored topology differs from {file} and is used"
    source = (
        f"checkpoint {checkpoint} (epoch {payload['epoch']}, method {payload['method']}){differs}"
    )
    return LoadedNetwork(net, source, settings.get("dataset"), settings.get("data_dir"))


def analysis_batch(
    net: CompiledNetwork, dataset: str, data_dir: str | None, size: int = 64
) -> tuple[Tensor, Tensor, str]:
    """The first ``size`` raw examples of the dataset's test split, and a line describing them.

    The examples are as the loader gives them: the network prepares them
    (:meth:`~topo_ep.compiler.CompiledNetwork.prepare_input`), as it does in training.
    """
    data = load_dataset(dataset, data_dir)
    check_compatible(data, net.spec.input.size, net.spec.readout.size, None)
    declared = net.spec.input
    x = data.test.x[:size].to(device=net.device, dtype=net.dtype)
    y = data.test.y[:size].to(net.device)
    described = f"{dataset}, first {len(y)} examples of the test split"
    if declared.standardised:
        described += (
            f", standardised as (x - {declared.mean:g}) / {declared.std:g} (the topology's input)"
        )
    return x, y, described
