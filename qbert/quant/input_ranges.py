"""How each encoder Linear's input (activation) is quantized: a range mode per *site*.

The four input sites of a BERT encoder layer (each Linear kind reads one of them):

* ``qkv``: the query/key/value projections' input (the layer's input hidden states);
* ``attn_out``: the attention output projection's input (the attention context);
* ``ffn_in``: the FFN input projection's input (``intermediate.dense``; after a LayerNorm);
* ``ffn_out``: the FFN output projection's input (``output.dense``; the GELU output, whose
  max/std is 38 to 88 on MiniLM-L6, so one range per tensor wastes most of the grid).

Range modes (``A_RANGES``):

* ``ema``: one range per tensor, an EMA of the batch range (Q8BERT), on the grid ``symmetric``
  gives (symmetric: ``max|x|``; asymmetric: min/max with a zero point) - what every run did
  before these modes existed;
* ``ema_asym``: the same EMA range, always asymmetric (min/max with a zero point), whatever grid
  the weights have;
* ``per_token``: each token's own range, taken from that token's values at every forward (no
  state, no calibration), on the grid ``symmetric`` gives;
* ``per_token_asym``: per-token ranges, always asymmetric.

An asymmetric input with a symmetric weight is written in a ``QuantSpec`` as
``symmetric=False`` (the input) with the weight's grid spelled out in ``w_grid``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from qbert.quant.plan import QuantSpec
from qbert.quant.primitives import FLOAT_BITS

A_RANGES: tuple[str, ...] = ("ema", "ema_asym", "per_token", "per_token_asym")
SITES: tuple[str, ...] = ("qkv", "attn_out", "ffn_in", "ffn_out")
# the module names (after "encoder.layer.<i>.") whose input each site is
SITE_MODULES: dict[str, str] = {
    "qkv": r"attention\.self\.(?:query|key|value)",
    "attn_out": r"attention\.output\.dense",
    "ffn_in": r"intermediate\.dense",
    "ffn_out": r"output\.dense",
}


def site_of(module_name: str) -> Optional[str]:
    """The input site of an encoder Linear from its module name (None: not an encoder Linear)."""
    for site, pattern in SITE_MODULES.items():
        if re.fullmatch(rf"(?:.+\.)?encoder\.layer\.\d+\.{pattern}", module_name):
            return site
    return None


def input_spec(spec: QuantSpec, mode: str, a_bits: Optional[int] = None) -> QuantSpec:
    """``spec`` with its input quantized by range ``mode`` at ``a_bits`` (None: ``spec.a_bits``);
    the weight's quantization is unchanged."""
    if mode not in A_RANGES:
        raise ValueError(f"input range mode {mode!r}: expected one of {list(A_RANGES)}")
    bits = spec.a_bits if a_bits is None else a_bits
    if bits == FLOAT_BITS and mode != "ema":
        raise ValueError(f"input range mode {mode!r} with a_bits=32: a float input has no range to take")
    changes: dict = {"a_bits": bits}
    if mode.endswith("_asym") and spec.symmetric:
        changes.update(symmetric=False, w_grid=spec.weight_grid)  # the weight keeps its grid
    if mode.startswith("per_token"):
        changes.update(dynamic=True, per_token=True)
    return spec.replace(**changes)


@dataclass(frozen=True)
class InputRanges:
    """The input range mode of every site: ``mode`` everywhere (where the input is quantized),
    except where ``sites`` names another one; the width of every site: the spec's ``a_bits``
    except where ``site_bits`` names another one (``quant.a_range``, ``quant.a_sites``,
    ``quant.a_site_bits``). A mode named in ``sites`` for a float input is a ValueError."""

    mode: str = "ema"
    sites: Mapping[str, str] = field(default_factory=dict)
    site_bits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, mapping in (("sites", self.sites), ("site_bits", self.site_bits)):
            unknown = sorted(set(mapping) - set(SITES))
            if unknown:
                raise ValueError(f"input range {what}: unknown site(s) {unknown}, expected some of {list(SITES)}")
        bad = {s: m for s, m in self.sites.items() if m not in A_RANGES}
        if self.mode not in A_RANGES or bad:
            raise ValueError(f"input range modes {bad or self.mode!r}: expected one of {list(A_RANGES)}")

    @property
    def is_default(self) -> bool:
        """Every site as before these settings existed (EMA per tensor, the spec's width)."""
        return self.mode == "ema" and all(m == "ema" for m in self.sites.values()) and not self.site_bits

    def spec_for(self, spec: Optional[QuantSpec], site: str) -> Optional[QuantSpec]:
        """The spec of a Linear reading ``site``'s input (None stays None: a float module)."""
        if spec is None or self.is_default:
            return spec
        bits = self.site_bits.get(site, spec.a_bits)
        # the mode for every site concerns the quantized inputs; a float one keeps no range
        mode = self.sites.get(site, "ema" if bits == FLOAT_BITS else self.mode)
        try:
            return input_spec(spec, mode, bits)
        except ValueError as err:
            raise ValueError(f"site {site!r}: {err}") from None
