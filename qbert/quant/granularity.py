"""Which weights share a quantization range: per tensor, per output channel, or group-wise.

A weight matrix ``[out, in]`` (or an embedding table ``[vocab, dim]``) has its *rows* split into
``G`` contiguous groups, each with its own range (Q-BERT's group-wise quantization):

* ``G = 1``: one range per tensor (DirectQ, Q8BERT);
* ``G = out`` (spelled ``"channel"``): one range per output row;
* ``G = num_heads`` on Q/K/V: one range per attention head (HF lays heads out as contiguous
  blocks of ``head_dim`` output rows);
* ``G = 128``: Q-BERT's default (6 rows per group for a 768-row matrix).

Ranges come back shaped ``[G, 1, 1]`` so they broadcast against ``group_view(w)`` =
``w.reshape(G, out // G, in)``.

``group_qparams`` also takes the weight-only range ``"mse"``: each group's min/max range scaled
by the clipping ratio of least squared error on the grid (``primitives.mse_clip_ratio``), or by a
ratio chosen earlier (``clip_ratio``, what ``WeightQuantizer`` keeps between searches).
"""

from __future__ import annotations

from typing import Union

from torch import Tensor

from qbert.quant.primitives import (
    WEIGHT_RANGE_METHODS,
    RangeMethod,
    WeightRangeMethod,
    compute_qparams,
    mse_clip_ratio,
    range_from_tensor,
)

Groups = Union[int, str]  # a positive int, or "channel" (= number of rows)
CHANNEL = "channel"


def resolve_groups(groups: Groups, rows: int, name: str = "tensor") -> int:
    """Number of row groups for a tensor with ``rows`` rows; ValueError if it does not divide."""
    if groups == CHANNEL:
        return rows
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: groups={groups!r} must be a positive int or {CHANNEL!r}")
    if rows % groups:
        raise ValueError(
            f"{name}: groups={groups} does not divide its {rows} rows "
            f"({rows} % {groups} = {rows % groups}); pick a divisor of {rows}"
        )
    return groups


def group_view(w: Tensor, groups: Groups, name: str = "tensor") -> Tensor:
    """View a 2-D weight ``[rows, cols]`` as ``[G, rows // G, cols]`` (no copy)."""
    if w.ndim != 2:
        raise ValueError(f"{name}: group-wise ranges need a 2-D weight, got shape {tuple(w.shape)}")
    g = resolve_groups(groups, w.shape[0], name)
    return w.reshape(g, w.shape[0] // g, w.shape[1])


def group_ranges(
    w: Tensor,
    groups: Groups,
    method: RangeMethod = "minmax",
    percentile: float = 99.99,
    name: str = "tensor",
) -> tuple[Tensor, Tensor]:
    """Per-group ``(lo, hi)`` of a 2-D weight, each ``[G, 1, 1]``."""
    return range_from_tensor(group_view(w, groups, name), method, percentile, dim=(1, 2))


def group_clip_ratio(w: Tensor, groups: Groups, bits: int, symmetric: bool, full: bool = False,
                     name: str = "tensor") -> Tensor:
    """Per-group clipping ratio ``[G, 1, 1]`` of least squared error (``mse_clip_ratio``)."""
    wg = group_view(w, groups, name)
    lo, hi = range_from_tensor(wg, "minmax", dim=(1, 2))
    return mse_clip_ratio(wg, lo, hi, bits, symmetric, full, dim=(1, 2))


def group_qparams(
    w: Tensor,
    groups: Groups,
    bits: int,
    symmetric: bool,
    method: WeightRangeMethod = "minmax",
    percentile: float = 99.99,
    name: str = "tensor",
    full: bool = False,
    clip_ratio: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-group ``(scale, zero_point)``, each ``[G, 1, 1]``. ``method="mse"``: the min/max
    range times ``clip_ratio`` (``[G, 1, 1]``), searched now when it is None."""
    if method == "mse":
        lo, hi = group_ranges(w, groups, "minmax", name=name)
        if clip_ratio is None:
            clip_ratio = group_clip_ratio(w, groups, bits, symmetric, full, name)
        lo, hi = lo * clip_ratio, hi * clip_ratio
    elif method in WEIGHT_RANGE_METHODS:
        lo, hi = group_ranges(w, groups, method, percentile, name)
    else:
        raise ValueError(f"{name}: range={method!r}, expected one of {WEIGHT_RANGE_METHODS}")
    return compute_qparams(lo, hi, bits, symmetric, full)
