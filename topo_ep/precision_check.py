"""Whether the dtype's rounding changes EP's update: a float64 control, once per epoch.

EP learns from the contrast of two relaxed states of each layer, ``s^nudged - s^free``. Down a
deep net the contrast shrinks like the product of the feedback gains, while each state carries
the rounding of its dtype, about ``eps * |s|`` per element, and more after many relaxation steps.
Whether the rounding matters cannot be read off the contrast's size alone: the sum over the batch
in ``dW = sum_b c_b x_b^T`` averages it, and relaxation steps add to it. Measured on trained
Table 2 nets (``analysis/reports/table2/progress/check_gradients/``: the contrast in float32
rounding units ``||c|| / (eps ||s||)`` on 500 test images, the cosine of the float32 and float64
updates on 64 training examples): agt_10x64's lowest layer had 0.7 units and cosine 0.75 on its
input edge; res_20x64's three lowest layers 0.8-1.7 units and cosines -0.09 to 0.28; res_10x64's
lowest layer 141 units and cosine 1.000.

So the check measures it: EP's update of every learned tensor on a fixed batch of training
examples, computed on the network and on a float64 copy of the same weights
(:func:`topo_ep.compiler.recompiled`), and the cosine of the two,

    cos_e = <dW_e, dW_e^64> / (||dW_e|| ||dW_e^64||).

Tensors with ``cos_e`` below :data:`AGREEMENT` are the ones whose update the rounding has
changed. Both updates start from zero states with eager steps and without the all-reduce of a
data-parallel run, so the check runs on one process and touches no run state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork, recompiled
from topo_ep.learn.ep import EquilibriumPropagation

#: A tensor whose update has a smaller cosine with its float64 control is reported.
AGREEMENT = 0.9
#: The training examples of the check (the first ones of the training split).
CHECK_EXAMPLES = 64


def update_cosine(update: Tensor, control: Tensor) -> float:
    """The cosine of an update with its float64 control,

        cos = <dW, dW^64> / (||dW|| ||dW^64||),

    with two limits. NaN where the control is zero: no signal reaches the tensor, so its
    agreement is not a question of precision. 0 where only ``update`` is zero: the rounding
    has cancelled the whole contrast, the worst disagreement there is (a float32 update can
    come out exactly zero where float64's is not, depending on the CPU's kernels).
    """
    a, b = update.double().flatten(), control.double().flatten()
    control_norm = float(b.norm())
    if control_norm == 0.0:
        return float("nan")
    own_norm = float(a.norm())
    if own_norm == 0.0:
        return 0.0
    return float(a @ b) / (own_norm * control_norm)


def float64_agreement(net: CompiledNetwork, x: Tensor, y: Tensor) -> dict[str, float]:
    """Per learned tensor (its :class:`~topo_ep.params.ParamKey` string), the cosine between
    EP's update in ``net``'s dtype and in float64, on the batch ``(x, y)``
    (:func:`update_cosine`: NaN where the float64 update is zero, 0 where only the other is)."""
    method = replace(EquilibriumPropagation.from_spec(net.spec), chunks=None)  # eager steps
    control = recompiled(net, torch.float64)
    device = net.device
    own = method.estimate(net, x.to(device, net.dtype), y.to(device)).grads
    reference = method.estimate(control, x.to(device, torch.float64), y.to(device)).grads
    return {str(key): update_cosine(update, reference[key]) for key, update in own.items()}


def disagreeing(cosines: dict[str, float], threshold: float = AGREEMENT) -> list[tuple[str, float]]:
    """The tensors whose cosine is below ``threshold`` (NaN, no signal, left out), in the given
    order."""
    return [(key, value) for key, value in cosines.items() if value < threshold]


def disagreement_message(epoch: int, tensors: Sequence[tuple[str, float]], dtype: str) -> str:
    """The warning for the tensors of :func:`disagreeing`."""
    listed = ", ".join(f"{key} ({value:.2f})" for key, value in tensors)
    return (
        f"epoch {epoch}: {dtype} rounding changes EP's update of {len(tensors)} tensor(s): "
        f"their cosine with a float64 control on {CHECK_EXAMPLES} training examples is below "
        f"{AGREEMENT:g}: {listed}. Their EP signal is too small for {dtype} (deep layers, small "
        "feedback gains or nudge); train in float64 (--dtype float64), or raise the gains or "
        "the nudge. `topo-ep analyze` shows the signal by layer"
    )
