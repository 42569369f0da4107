"""The packed file: a safetensors file (no pickle) whose metadata says how to rebuild the model.

Tensors (``{m}`` = a quantized module's name in the model):

* ``{m}.weight.packed``: uint8, the weight's integer codes bit-packed (``packing.LAYOUT``);
* ``{m}.weight.scale``: fp32 ``[G]``, one step per row group; ``{m}.weight.zero_point``: int32
  ``[G]``, only for an asymmetric weight;
* ``{m}.input.qparams``: fp32 ``[2]``, the input quantizer learned in QAT or calibration:
  ``(scale, zero_point)`` of an EMA range, or ``(step, offset)`` of a learned (LSQ) one; absent
  for a float or dynamic (per-batch) input;
* ``{a}.operands.{query,key,value,probs}.qparams``: fp32 ``[2]``, ``(step, offset)`` of each
  attention matmul operand, for a self-attention ``{a}`` whose plan has ``attn_operands``
  (MKQ's true W4A4: ``quant.attention_operands``); P on the unsigned grid;
* every other state_dict entry (biases, LayerNorms, float modules, the task head) as stored.

Metadata (safetensors keeps string values; ours are JSON): ``format`` (``FORMAT``), ``layout``,
``architecture`` (the transformers class), ``config`` (the model config), ``plan`` (the
quantization map, a valid precision plan), ``modules`` (per quantized module: kind, shape,
widths, groups, symmetric, weight/input kind), ``sha256`` (per tensor, of its raw bytes) and
``metadata_sha256`` (per metadata field: one digest for every leaf of ``config``, ``plan`` and
``modules`` and for ``architecture`` and ``layout``, keyed by its dotted path), so that an edited
``hidden_act``, ``layer_norm_eps``, ``id2label`` entry or activation width is refused by name.

``read_packed`` refuses, with ``PackedFileError`` naming the file (and tensor or metadata field),
a file that is truncated or padded, whose header is not JSON, whose format is unknown or older
than metadata checksums, whose metadata fields were edited, added or removed, or whose tensors do
not match their checksums; it returns only after every check passed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from qbert.export.packing import LAYOUT

FORMAT = "qbert.packed/2"  # /2: metadata checksums (a /1 file cannot show that its metadata is intact)
JSON_KEYS = ("config", "plan", "modules", "sha256", "metadata_sha256")
CHECKED_FIELDS = ("config", "plan", "modules", "architecture", "layout")  # covered by metadata_sha256


class PackedFileError(ValueError):
    """A packed file that cannot be loaded as it is (names the file, and the tensor if any)."""


def operand_key(attention: str, operand: str) -> str:
    """The tensor holding a self-attention's matmul operand's ``[step, offset]`` (``operand``: query,
    key, value or probs), for a plan with ``attn_operands``."""
    return f"{attention}.operands.{operand}.qparams"


def tensor_sha256(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def _leaves(value: Any, path: str):
    """``(dotted path, value)`` for every leaf of a JSON value; an empty dict or list is a leaf."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def metadata_digests(fields: dict[str, Any]) -> dict[str, str]:
    """One short sha256 per metadata leaf (type and value: ``1`` and ``1.0`` and ``"1"`` differ)."""
    return {path: hashlib.sha256(json.dumps([type(v).__name__, v], sort_keys=True).encode()).hexdigest()[:16]
            for name in CHECKED_FIELDS for path, v in _leaves(fields.get(name), name)}


def check_metadata(path: Path, fields: dict[str, Any], digests: Any) -> None:
    """Refuse metadata that differs from what was written, naming the edited, added or removed fields."""
    if not isinstance(digests, dict):
        raise PackedFileError(f"{path}: metadata 'metadata_sha256' is not a mapping")
    now = metadata_digests(fields)
    edited = sorted(k for k in now.keys() & digests.keys() if now[k] != digests[k])
    added, removed = sorted(now.keys() - digests.keys()), sorted(digests.keys() - now.keys())
    if edited or added or removed:
        parts = [f"{label} {names[:5]}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                 for label, names in (("edited", edited), ("added", added), ("removed", removed)) if names]
        raise PackedFileError(f"{path}: metadata changed since it was written ({'; '.join(parts)}): "
                              "the file is corrupted or was edited; export it again")


def write_packed(path: str | Path, tensors: dict[str, Tensor], architecture: str, config: dict,
                 plan: dict, modules: dict) -> Path:
    """Write ``tensors`` and the metadata (checksums added here) to ``path``."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta: dict[str, Any] = {"config": config, "plan": plan, "modules": modules,
                            "sha256": {k: tensor_sha256(v) for k, v in tensors.items()}}
    # Checksum what a reader will decode (a JSON round trip), so tuples and int keys compare equal.
    fields = json.loads(json.dumps({**meta, "layout": LAYOUT, "architecture": architecture}, sort_keys=True))
    meta["metadata_sha256"] = metadata_digests(fields)
    metadata = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
    metadata.update(format=FORMAT, layout=LAYOUT, architecture=architecture)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The safetensors header, after checking the file holds exactly the bytes it declares."""
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"{path}: no such packed file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PackedFileError(f"{path}: truncated ({size} bytes; not even a safetensors header length)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise PackedFileError(f"{path}: truncated: the header declares {n} bytes, the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PackedFileError(f"{path}: corrupted header (not JSON: {err})") from None
    if not isinstance(header, dict):
        raise PackedFileError(f"{path}: corrupted header (not a JSON object)")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise PackedFileError(f"{path}: truncated: {size} bytes, the header describes {expected}")
    if size > expected:
        raise PackedFileError(f"{path}: {size - expected} unexpected bytes after the last tensor")
    return header


def read_packed(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a packed file, metadata JSON decoded; every check first."""
    path = Path(path)
    header = read_header(path)
    raw = header.get("__metadata__") or {}
    if raw.get("format") == "qbert.packed/1":
        raise PackedFileError(f"{path}: written by an older qbert (format 'qbert.packed/1', no metadata checksums, "
                              f"so an edited config cannot be detected): export it again with this version")
    if raw.get("format") != FORMAT:
        raise PackedFileError(f"{path}: not a qbert packed file (format={raw.get('format')!r}, expected {FORMAT!r})")
    meta: dict[str, Any] = dict(raw)
    for key in JSON_KEYS:
        if key not in raw:
            raise PackedFileError(f"{path}: metadata lacks {key!r}")
        try:
            meta[key] = json.loads(raw[key])
        except json.JSONDecodeError as err:
            raise PackedFileError(f"{path}: metadata {key!r} is not JSON ({err})") from None
    check_metadata(path, meta, meta["metadata_sha256"])
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise PackedFileError(f"{path}: unreadable safetensors data ({err})") from None
    sums = meta["sha256"]
    if set(sums) != set(tensors):
        extra, missing = sorted(set(tensors) - set(sums)), sorted(set(sums) - set(tensors))
        raise PackedFileError(f"{path}: tensors without a checksum {extra[:5]}, checksums without a tensor {missing[:5]}")
    for name, t in tensors.items():
        if tensor_sha256(t) != sums[name]:
            raise PackedFileError(f"{path}: tensor {name!r} is corrupted (sha256 mismatch)")
    return tensors, meta
