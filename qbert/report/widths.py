"""A row's bit widths and groups, read from the plan a run actually applied (its recorded
``quantization_map``: module name -> spec), never re-derived from the config."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

FLOAT_BITS = 32
ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


@dataclass(frozen=True)
class Widths:
    layer_bits: Optional[list[int]]  # encoder weight width per layer (None: no encoder Linear quantized)
    mean_w_bits: float  # over encoder layers (the plots' x axis)
    e_bits: int  # word embeddings
    a_bits: int  # inputs of the quantized Linears (the most common width)
    groups: Optional[int]  # row groups per encoder matrix (the most common count)

    @property
    def mixed(self) -> bool:
        return bool(self.layer_bits) and len(set(self.layer_bits)) > 1


def _most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def widths_from_map(qmap: Optional[Mapping[str, Mapping[str, Any]]]) -> Widths:
    """Widths of a run from its quantization map (empty or None: full precision)."""
    if not qmap:
        return Widths(None, float(FLOAT_BITS), FLOAT_BITS, FLOAT_BITS, None)
    by_layer: dict[int, list[int]] = {}
    linears = []
    for name, spec in qmap.items():
        match = ENCODER_LAYER.search(name)
        if match:
            by_layer.setdefault(int(match.group(1)), []).append(int(spec["w_bits"]))
            linears.append(spec)
    layer_bits = [_most_common(by_layer[i]) for i in sorted(by_layer)] or None
    # e-bits: the word embedding's width; where only another embedding is quantized (the module
    # study's position-embedding rows), that one's, so the column never says 32 for a quantized table.
    embeddings = {name: int(spec["w_bits"]) for name, spec in qmap.items() if name.endswith("_embeddings")}
    word = next((bits for name, bits in embeddings.items() if name.endswith("word_embeddings")), None)
    e_bits = word if word is not None else min(embeddings.values(), default=FLOAT_BITS)
    if layer_bits:
        mean = sum(layer_bits) / len(layer_bits)
    else:  # only embeddings quantized (a module study): their width
        mean = float(_most_common([int(s["w_bits"]) for s in qmap.values()]))
    a_bits = _most_common([int(s.get("a_bits", FLOAT_BITS)) for s in linears])
    groups = _most_common([s.get("groups") for s in linears]) if linears else None
    return Widths(layer_bits, mean, e_bits, a_bits if a_bits is not None else FLOAT_BITS,
                  int(groups) if isinstance(groups, int) else groups)


def w_bits_label(widths: Widths, method_label: str) -> str:
    """The w-bits column as a paper prints it: "4", "2/3 MP", or "2.5 (3/3/3/2/2/2)" for an
    allocation that is not the paper's two-width rule."""
    if widths.layer_bits is None:
        return f"{widths.mean_w_bits:g}"
    if not widths.mixed:
        return str(widths.layer_bits[0])
    kinds = sorted(set(widths.layer_bits))
    if method_label.startswith("Q-BERT MP") and " ILP" not in method_label and "manual" not in method_label \
            and len(kinds) == 2:
        return f"{kinds[0]}/{kinds[1]} MP"
    return f"{widths.mean_w_bits:g} ({'/'.join(map(str, widths.layer_bits))})"
