"""Hessian-vector products of a task loss with respect to one encoder layer's weights.

``BlockHessian(model, batches)`` runs the forward pass and the first backward pass (with
``create_graph=True``) once per batch and keeps their graphs; every ``hvp(layer, v)`` afterwards
is one more backward pass through the retained graph (double back-propagation), so a power
iteration of k steps over L layers costs one forward + first backward and k x L second
backwards, not k x L forwards.

A *block* is the weight matrices of the six Linear modules of encoder layer ``i`` (Q, K, V,
attention output, FFN in and out): exactly what a precision plan quantizes per layer. Biases and
LayerNorms stay out (they stay float or are charged with their Linear).

The loss is the task head's own (``model(**batch).loss``), so classification, token
classification and extractive QA all work. **The caller chooses the model's mode**: the
analysis runs in whatever mode it finds (Q-BERT uses eval mode, i.e. no dropout, so the Hessian
is that of a deterministic function). Attention must be eager: PyTorch's SDPA kernels have no
double backward (``eager_attention`` switches a model for the duration of a block).
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from qbert.data.features import model_inputs

Vector = list[Tensor]  # one tensor per parameter of a block
_LAYER = re.compile(r"(?:.+\.)?encoder\.layer\.(\d+)\..+")


def layer_index(name: str) -> int | None:
    """``i`` for a module (or parameter) name inside ``encoder.layer.<i>``, else None."""
    match = _LAYER.fullmatch(name)
    return int(match.group(1)) if match else None


def layer_blocks(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """``blocks[i]``: the (name, weight) of every Linear in encoder layer ``i``, in module order."""
    blocks: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, module in model.named_modules():
        index = layer_index(name)
        if index is not None and isinstance(module, nn.Linear):
            blocks.setdefault(index, []).append((name, module.weight))
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no encoder.layer.<i> Linear modules")
    missing = sorted(set(range(max(blocks) + 1)) - set(blocks))
    if missing:
        raise ValueError(f"encoder layers {missing} have no Linear modules")
    return [blocks[i] for i in range(len(blocks))]


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run a Hugging Face model with eager attention inside the block, then restore it."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def task_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The head's loss on one collated batch (labels / answer positions included)."""
    device = next(model.parameters()).device
    output = model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
    if output.loss is None:
        raise ValueError("the model returned no loss: the batch carries no labels")
    return output.loss


class BlockHessian:
    """The Hessian of the mean loss over ``batches`` restricted to each layer block, as an operator.

    Holds the autograd graphs of the batches until ``close()`` (or the end of a ``with``).
    """

    def __init__(self, model: nn.Module, batches: Sequence[dict[str, Tensor]],
                 blocks: list[list[tuple[str, nn.Parameter]]] | None = None) -> None:
        if not batches:
            raise ValueError("BlockHessian needs at least one batch")
        self.blocks = blocks if blocks is not None else layer_blocks(model)
        self.params = [[p for _, p in block] for block in self.blocks]
        flat = [p for block in self.params for p in block]
        self._grads: list[list[list[Tensor]]] = []  # [batch][layer][param]
        self.loss = 0.0
        with torch.enable_grad():
            for batch in batches:
                loss = task_loss(model, batch)
                grads = torch.autograd.grad(loss, flat, create_graph=True)
                self.loss += float(loss.detach()) / len(batches)
                it = iter(grads)
                self._grads.append([[next(it) for _ in block] for block in self.params])

    def __enter__(self) -> "BlockHessian":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._grads.clear()  # frees the retained graphs

    @property
    def num_layers(self) -> int:
        return len(self.params)

    def shapes(self, layer: int) -> list[torch.Size]:
        return [p.shape for p in self.params[layer]]

    def num_parameters(self, layer: int) -> int:
        return sum(p.numel() for p in self.params[layer])

    def gradient(self, layer: int) -> Vector:
        """The (detached) gradient of the mean loss w.r.t. the block."""
        n = len(self._grads)
        return [sum(g[layer][j].detach() for g in self._grads) / n for j in range(len(self.params[layer]))]

    def hvp(self, layer: int, v: Vector) -> Vector:
        """H_layer @ v, averaged over the batches (the Hessian of the mean loss)."""
        if not self._grads:
            raise RuntimeError("BlockHessian is closed")
        out: Vector | None = None
        for grads in self._grads:
            hv = torch.autograd.grad(grads[layer], self.params[layer], grad_outputs=v, retain_graph=True)
            out = list(hv) if out is None else [a + b for a, b in zip(out, hv)]
        n = len(self._grads)
        return [h / n for h in out] if n > 1 else out
