"""Operations every part of qbert performs on a model, written once: swap a submodule by its
dotted name, load a state dict that must fit exactly (no silent partial loads), and read the
files a run saves a model in (safetensors weights, the quantization map), naming a damaged one."""

from __future__ import annotations

import json
from typing import Mapping

import torch
from torch import nn

# Keys a saved model may legitimately lack: persistent buffers transformers rebuilds itself.
OPTIONAL_KEYS = ("position_ids",)


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a ValueError naming the file when it is truncated
    or damaged (safetensors' own error names neither the file nor what to do)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); the run that wrote it was "
                         "interrupted or the file was damaged: run it again") from None


def read_quantization_map(path) -> dict:
    """A run's quantization_map.json, or a ValueError naming it when it is not a JSON object."""
    try:
        qmap = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable quantization map ({err})") from None
    if not isinstance(qmap, dict):
        raise ValueError(f"{path}: not a readable quantization map (a JSON {type(qmap).__name__}, not an object)")
    return qmap


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted, as in ``named_modules``) is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def load_weights_(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                  key: str | None = None, ignore_missing: tuple[str, ...] = ()) -> nn.Module:
    """Load ``state`` into ``model`` in place; every tensor must match. ``source`` (and the
    config ``key`` it came from, if any) name the file in the error; ``ignore_missing``: more
    key suffixes that may be absent."""
    where = f"config key '{key}': {source}" if key else str(source)
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:  # a shape mismatch: another task head or architecture
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise ValueError(f"{where} does not fit this model: {first}") from None
    missing = [k for k in missing if not k.endswith((*OPTIONAL_KEYS, *ignore_missing))]
    if missing or unexpected:
        raise ValueError(f"{where} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
