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
"""

from __future__ import annotations

from typing import Union

from torch import Tensor

from qbert.quant.primitives import RangeMethod, compute_qparams, range_from_tensor

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


def group_qparams(
    w: Tensor,
    groups: Groups,
    bits: int,
    symmetric: bool,
    method: RangeMethod = "minmax",
    percentile: float = 99.99,
    name: str = "tensor",
) -> tuple[Tensor, Tensor]:
    """Per-group ``(scale, zero_point)``, each ``[G, 1, 1]``."""
    lo, hi = group_ranges(w, groups, method, percentile, name)
    return compute_qparams(lo, hi, bits, symmetric)
