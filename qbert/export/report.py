"""Measured size of a packed file, per section, beside the ``"storage"`` size accounting.

Sections follow ``qbert.quant.size``: a tensor belongs to ``embeddings`` or ``encoder`` when that
word is a component of its name, else to ``other`` (pooler, task head). ``header`` is the
safetensors header (tensor index + metadata: config, plan, checksums), counted apart.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from torch import nn

from qbert.export.loader import build_skeleton
from qbert.export.packed_file import read_header, read_packed
from qbert.quant.plan import QuantSpec, assign
from qbert.quant.size import SECTIONS, account, model_slots


def section_of(name: str) -> str:
    parts = name.split(".")
    return "embeddings" if "embeddings" in parts else "encoder" if "encoder" in parts else "other"


def size_report(path: str | Path) -> dict[str, Any]:
    """Bytes per section in the file vs the storage accounting of its config + plan."""
    path = Path(path)
    header = read_header(path)
    _, meta = read_packed(path)
    measured = dict.fromkeys(SECTIONS, 0)
    for name, entry in header.items():
        if name != "__metadata__":
            start, end = entry["data_offsets"]
            measured[section_of(name)] += end - start
    with path.open("rb") as f:
        header_bytes = 8 + struct.unpack("<Q", f.read(8))[0]
    skeleton = build_skeleton(meta, path)
    named = dict(skeleton.named_modules())
    chosen = assign(meta["plan"], ((n, type(m).__name__, type(m) in (nn.Linear, nn.Embedding)) for n, m in named.items()))
    slots, _ = model_slots(skeleton)
    acc = account(slots, {n: QuantSpec.from_dict(meta["plan"][n]) for n in chosen}, "storage")
    sections = {}
    for s in SECTIONS:
        accounted, fp32 = acc.bits[s] // 8, acc.fp32_bits[s] // 8
        sections[s] = {"file_bytes": measured[s], "accounted_bytes": accounted, "fp32_bytes": fp32,
                       "file_vs_accounted": round(measured[s] / accounted, 4) if accounted else None,
                       "compression_vs_fp32": round(fp32 / measured[s], 3) if measured[s] else None}
    total_fp32 = sum(acc.fp32_bits.values()) // 8
    size = path.stat().st_size
    return {"file": str(path), "file_bytes": size, "header_bytes": header_bytes,
            "accounted_bytes": sum(acc.bits.values()) // 8, "fp32_bytes": total_fp32,
            "file_vs_accounted": round(size / (sum(acc.bits.values()) // 8), 4),
            "compression_vs_fp32": round(total_fp32 / size, 3), "sections": sections}


def format_report(rep: dict[str, Any]) -> str:
    mib = lambda b: f"{b / 2**20:9.3f}"  # noqa: E731
    lines = [f"{'section':<11}{'fp32 MiB':>10}{'file MiB':>10}{'accounted':>10}{'file/acc':>9}{'x fp32':>8}"]
    for s, r in rep["sections"].items():
        ratio = "" if r["file_vs_accounted"] is None else f"{r['file_vs_accounted']:.4f}"
        comp = "" if r["compression_vs_fp32"] is None else f"{r['compression_vs_fp32']:.2f}"
        lines.append(f"{s:<11}{mib(r['fp32_bytes'])} {mib(r['file_bytes'])} {mib(r['accounted_bytes'])}{ratio:>9}{comp:>8}")
    lines.append(f"{'header':<11}{'':>10} {mib(rep['header_bytes'])}")
    lines.append(f"{'file':<11}{mib(rep['fp32_bytes'])} {mib(rep['file_bytes'])} {mib(rep['accounted_bytes'])}"
                 f"{rep['file_vs_accounted']:>9.4f}{rep['compression_vs_fp32']:>8.2f}")
    return "\n".join(lines)
