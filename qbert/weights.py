"""Two operations every part of qbert performs on a model, written once: swap a submodule by its
dotted name, and load a state dict that must fit exactly (no silent partial loads)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

# Keys a saved model may legitimately lack: persistent buffers transformers rebuilds itself.
OPTIONAL_KEYS = ("position_ids",)


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
