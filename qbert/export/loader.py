"""Packed file -> inference model (transformers architecture + ``PackedLinear``/``PackedEmbedding``).

No training code: the model is built from the stored config, checked against the stored plan,
and filled from the file's tensors. Every check runs before any module is replaced, so a bad
file raises ``PackedFileError`` (naming file, module or tensor) and nothing half-loaded escapes::

    model = load_packed("sst2_q8bert.qbert.safetensors")   # eval mode, on CPU
    logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qbert.export.modules import PackedEmbedding, PackedLinear, PackedOperand
from qbert.export.packed_file import PackedFileError, operand_key, read_packed
from qbert.export.packing import from_codes, packed_nbytes, unpack
from qbert.quant.attention import OPERANDS, attention_operand_specs, operand_symmetric, quantize_matmuls_with_
from qbert.quant.granularity import resolve_groups
from qbert.quant.plan import assign
from qbert.quant.primitives import FLOAT_BITS
from qbert.hf import mark_packed
from qbert.weights import replace_module

SUFFIXES = ("weight.packed", "weight.scale", "weight.zero_point", "weight", "input.qparams")


def build_skeleton(meta: dict[str, Any], path: Path) -> nn.Module:
    """The float architecture the file was exported from, from its config (random weights)."""
    import transformers

    arch, config = meta.get("architecture"), meta["config"]
    cls = getattr(transformers, arch or "", None)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if cls is None or model_type not in transformers.CONFIG_MAPPING:
        raise PackedFileError(f"{path}: unknown architecture {arch!r} / model_type {model_type!r}")
    try:
        cfg = transformers.CONFIG_MAPPING[model_type].from_dict(config)
        return cls(cfg).eval()
    except Exception as err:
        raise PackedFileError(f"{path}: its config does not build a {arch} ({err})") from None


def _module_tensors(name: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {s: tensors[f"{name}.{s}"] for s in SUFFIXES if f"{name}.{s}" in tensors}


def _check_module(path: Path, name: str, info: dict, spec: dict, target: nn.Module, own: dict[str, Tensor]) -> None:
    def fail(msg: str):
        raise PackedFileError(f"{path}: module {name!r}: {msg}")

    kind = "linear" if isinstance(target, nn.Linear) else "embedding" if isinstance(target, nn.Embedding) else None
    if kind != info.get("kind"):
        fail(f"the file has a {info.get('kind')}, the config builds a {type(target).__name__}")
    shape = list(target.weight.shape)
    if info.get("shape") != shape:
        fail(f"weight shape {info.get('shape')} in the file, {shape} in the config")
    if info.get("w_bits") != spec["w_bits"] or info.get("a_bits") != spec["a_bits"]:
        fail(f"widths w{info.get('w_bits')}/a{info.get('a_bits')} do not match the plan's "
             f"w{spec['w_bits']}/a{spec['a_bits']}")
    rows, cols = shape
    if info["w_bits"] == FLOAT_BITS:
        if tuple(own.get("weight", torch.empty(0)).shape) != (rows, cols):
            fail("float weight missing or of the wrong shape")
    else:
        groups = resolve_groups(spec["groups"], rows, name)
        if info.get("groups") != groups:
            fail(f"{info.get('groups')} weight groups in the file, the plan gives {groups}")
        packed = own.get("weight.packed")
        if packed is None or packed.dtype != torch.uint8 or packed.numel() != packed_nbytes(rows * cols, info["w_bits"]):
            fail(f"tensor '{name}.weight.packed' missing or not {packed_nbytes(rows * cols, info['w_bits'])} bytes")
        if own.get("weight.scale") is None or own["weight.scale"].numel() != groups:
            fail(f"tensor '{name}.weight.scale' missing or not {groups} values")
        zp = own.get("weight.zero_point")
        if (zp is None) != bool(info.get("symmetric")) or (zp is not None and zp.numel() != groups):
            fail("weight zero points do not match the weight's symmetry")
    if kind == "linear":
        needs = info.get("input") in ("ema", "learned")
        if info.get("input") not in (None, "ema", "learned", "dynamic") or (info.get("input") is None) != (spec["a_bits"] == FLOAT_BITS):
            fail(f"input kind {info.get('input')!r} does not fit a_bits={spec['a_bits']}")
        if needs != ("input.qparams" in own) or (needs and own["input.qparams"].numel() != 2):
            fail(f"input qparams {'missing' if needs else 'unexpected'}")


def _codes(info: dict, own: dict[str, Tensor]) -> Tensor | None:
    if info["w_bits"] == FLOAT_BITS:
        return None
    rows, cols = info["shape"]
    return from_codes(unpack(own["weight.packed"], info["w_bits"], rows * cols), info["w_bits"], info["symmetric"])


def load_packed(path: str | Path) -> nn.Module:
    """The inference model stored in a packed file (eval mode, CPU)."""
    path = Path(path)
    tensors, meta = read_packed(path)
    model = build_skeleton(meta, path)
    modules, plan = meta["modules"], meta["plan"]
    named = dict(model.named_modules())
    try:  # the plan resolved against the config's modules, with the rules quantize_ uses
        chosen = assign(plan, ((n, type(m).__name__, type(m) in (nn.Linear, nn.Embedding)) for n, m in named.items()))
    except (ValueError, TypeError) as err:
        raise PackedFileError(f"{path}: its plan does not match its config: {err}") from None
    if set(chosen) != set(modules):
        raise PackedFileError(f"{path}: the plan quantizes {sorted(set(chosen) ^ set(modules))[:5]} "
                              "differently from the stored modules")
    own = {n: _module_tensors(n, tensors) for n in modules}
    for name, info in modules.items():
        _check_module(path, name, info, plan[name], named[name], own[name])
    try:  # the self-attentions whose operands the plan quantizes, by quantize_'s own rule
        attentions = attention_operand_specs(model, chosen)
    except (ValueError, TypeError) as err:
        raise PackedFileError(f"{path}: its plan's attention operands: {err}") from None
    operand_keys = {operand_key(a, o) for a in attentions for o in OPERANDS}
    for key in sorted(operand_keys):
        if key not in tensors or tensors[key].numel() != 2:
            raise PackedFileError(f"{path}: tensor {key!r} (an attention operand's [step, offset]) missing or not 2 values")
    # the float rest must fill the skeleton exactly
    state = model.state_dict()
    expected = {k: v for k, v in state.items() if not (k.rpartition(".")[0] in modules and k.endswith(".weight"))}
    claimed = {f"{n}.{s}" for n in modules for s in own[n]} | operand_keys
    rest = {k: v for k, v in tensors.items() if k not in claimed}
    bias = {f"{n}.bias" for n in modules if f"{n}.bias" in state}
    for k in sorted(set(expected) | set(rest)):
        if k not in rest:
            raise PackedFileError(f"{path}: tensor {k!r} is missing")
        if k not in expected:
            raise PackedFileError(f"{path}: tensor {k!r} does not belong to a {meta['architecture']} of this config")
        if rest[k].shape != expected[k].shape:
            raise PackedFileError(f"{path}: tensor {k!r} has shape {tuple(rest[k].shape)}, the config needs {tuple(expected[k].shape)}")
    # all checks passed: replace the quantized modules, then load the float rest
    for name, info in modules.items():
        codes = _codes(info, own[name])
        if info["kind"] == "linear":
            new: nn.Module = PackedLinear(info, plan[name], own[name], codes, rest.get(f"{name}.bias"))
        else:
            new = PackedEmbedding(info, own[name], codes)
        replace_module(model, name, new)
    floats = {k: v for k, v in rest.items() if k not in bias}
    missing, unexpected = model.load_state_dict(floats, strict=False)
    left = [k for k in missing if k.rpartition(".")[0] not in modules]
    if left or unexpected:  # unreachable after the checks above; kept as a guard
        raise PackedFileError(f"{path}: state mismatch: missing {left[:5]}, unexpected {unexpected[:5]}")
    for name, spec in attentions.items():
        quantize_matmuls_with_(named[name], {o: PackedOperand(spec.a_bits, operand_symmetric(o, spec.symmetric),
                                                              tensors[operand_key(name, o)]) for o in OPERANDS})
    mark_packed(model, str(path))  # save_pretrained would write codes a float loader misreads: refused
    return model.eval()
