"""Whether each layer's EP signal stands above the rounding of the dtype.

EP learns from the contrast of two relaxed states of a layer, ``a_k - b_k`` (nudged minus free,
or the two nudged states of symmetric nudging). Down a deep net the contrast shrinks like the
product of the feedback gains, and both states are rounded to the dtype: each element carries an
error of about ``eps * |a_k|``. The relative size of the contrast,

    r_k = ||a_k - b_k||_rms / ||a_k||_rms,

is therefore the signal in units of the rounding: ``r_k / eps`` rounding units. Far below
:data:`RESOLUTION_UNITS` units the layer's update is dominated by rounding, and an optimizer
that normalises each tensor's step (Adam) turns that noise into steps of full size. Measured on
res_20x64 in float32 (``analysis/reports/table2/progress/check_gradients``): the lowest
layers' contrast was about one rounding unit and their EP update had no better than a random
direction, while float64 kept cosines up to 0.87 on the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: A layer whose contrast is fewer than this many rounding units of its states is unresolved:
#: its update is at least about 1 % rounding, more after the steps of a relaxation.
RESOLUTION_UNITS = 100.0


def contrast_ratios(after: Sequence[Tensor], before: Sequence[Tensor]) -> Tensor:
    """Per layer, ``r_k = ||a_k - b_k||_rms / ||a_k||_rms`` as one tensor on the states' device
    (no host synchronisation); a layer whose states are all zero gets 0.

    Parameters
    ----------
    after, before
        The two states of every layer whose contrast EP learns from (one-sided: nudged and
        free; symmetric: +nudge and -nudge), shapes ``(batch, *layer)``.
    """
    ratios = []
    for a, b in zip(after, before, strict=True):
        size = torch.linalg.vector_norm(a)
        ratios.append(torch.linalg.vector_norm(a - b) / size.clamp_min(torch.finfo(a.dtype).tiny))
    return torch.stack(ratios)


def unresolved_layers(
    ratios: Tensor, names: Sequence[str], dtype: torch.dtype
) -> list[tuple[str, float]]:
    """The layers with ``0 < r_k < RESOLUTION_UNITS * eps(dtype)``, as (name, r_k / eps).

    A contrast of exactly 0 is left out: no signal reaches that layer at all (it is not a
    question of precision).
    """
    eps = torch.finfo(dtype).eps
    values = ratios.detach().to("cpu", torch.float64).tolist()
    return [
        (name, value / eps)
        for name, value in zip(names, values, strict=True)
        if 0.0 < value < RESOLUTION_UNITS * eps
    ]


def unresolved_message(epoch: int, layers: Sequence[tuple[str, float]], dtype: str) -> str:
    """The warning for the layers of :func:`unresolved_layers`."""
    listed = ", ".join(f"{name} ({units:.2g})" for name, units in layers)
    return (
        f"epoch {epoch}: the EP signal of {len(layers)} layer(s) is below "
        f"{RESOLUTION_UNITS:g} rounding units of {dtype} at its largest over the epoch "
        f"(||s^nudged - s^free|| / ||s^nudged|| in units of eps: {listed}); their updates are "
        "mostly rounding noise. Train in float64 (--dtype float64), or raise the feedback gains "
        "or the nudge; `topo-ep analyze` shows the signal by layer"
    )
