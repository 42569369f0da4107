"""Hessian-vector products of a task loss with respect to one encoder layer's weights.

``BlockHessian(model, batches)`` runs the forward pass and the first backward pass (with
``create_graph=True``) once per batch and keeps their graphs; every ``hvp(layer, v)`` afterwards
is one more backward pass through the retained graph (double back-propagation), so a power
iteration of k steps over L layers costs one forward + first backward and k x L second
backwards, not k x L forwards.

That keeps every batch's graph in memory at once: fine for one batch of 32, not for the
published setting's 10 % of the training data per run (210 batches of 32 on SST-2).
``StreamedBlockHessian`` is the same operator without kept graphs: every product runs each
batch's forward and first backward again, adds that batch's share and frees its graph before
the next batch, so memory is one batch's graph however many batches a run has; ``hvp_many``
forms the products of several layers in one such pass (one forward + first backward per batch,
one second backward per layer), which is how the analysis drives it (all layers in lockstep).

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
import time
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


def _graph_gradients(model: nn.Module, batch: dict[str, Tensor],
                     params: list[list[nn.Parameter]]) -> tuple[Tensor, list[list[Tensor]]]:
    """A batch's loss and its gradients with ``create_graph=True``, split by block: the graph a
    Hessian-vector product differentiates again (it lives as long as the returned gradients)."""
    flat = [p for block in params for p in block]
    with torch.enable_grad():
        loss = task_loss(model, batch)
        grads = torch.autograd.grad(loss, flat, create_graph=True)
    it = iter(grads)
    return loss, [[next(it) for _ in block] for block in params]


def _add(total: Vector | None, part: Sequence[Tensor]) -> Vector:
    """``total + part`` (``part`` when nothing is summed yet): both operators sum batch by batch
    in the same order, so they give the same numbers."""
    return list(part) if total is None else [a + b for a, b in zip(total, part)]


def _mean(total: Vector, n: int) -> Vector:
    return [h / n for h in total] if n > 1 else total


class _BlockOperator:
    """What both operators share: the blocks' weights, their shapes and sizes, ``with`` support."""

    def __init__(self, model: nn.Module, batches: Sequence[dict[str, Tensor]],
                 blocks: list[list[tuple[str, nn.Parameter]]] | None) -> None:
        if not batches:
            raise ValueError(f"{type(self).__name__} needs at least one batch")
        self.blocks = blocks if blocks is not None else layer_blocks(model)
        self.params = [[p for _, p in block] for block in self.blocks]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.params)

    def shapes(self, layer: int) -> list[torch.Size]:
        return [p.shape for p in self.params[layer]]

    def num_parameters(self, layer: int) -> int:
        return sum(p.numel() for p in self.params[layer])


class BlockHessian(_BlockOperator):
    """The Hessian of the mean loss over ``batches`` restricted to each layer block, as an operator.

    Holds the autograd graphs of the batches until ``close()`` (or the end of a ``with``).
    """

    def __init__(self, model: nn.Module, batches: Sequence[dict[str, Tensor]],
                 blocks: list[list[tuple[str, nn.Parameter]]] | None = None) -> None:
        super().__init__(model, batches, blocks)
        self._grads: list[list[list[Tensor]]] = []  # [batch][layer][param]
        self.loss = 0.0
        for batch in batches:
            loss, grads = _graph_gradients(model, batch, self.params)
            self.loss += float(loss.detach()) / len(batches)
            self._grads.append(grads)

    def close(self) -> None:
        self._grads.clear()  # frees the retained graphs

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
            out = _add(out, torch.autograd.grad(grads[layer], self.params[layer], grad_outputs=v, retain_graph=True))
        return _mean(out, len(self._grads))

    def hvp_many(self, vectors: dict[int, Vector]) -> dict[int, Vector]:
        """``{layer: H_layer @ v}`` for each ``{layer: v}`` (one product each, on the kept graphs)."""
        return {layer: self.hvp(layer, v) for layer, v in vectors.items()}


class StreamedBlockHessian(_BlockOperator):
    """``BlockHessian``'s operator with one batch's graph in memory at a time.

    Each product (``hvp``, or ``hvp_many`` for several layers at once) is one pass over the
    batches: forward and first backward (``create_graph=True``, with respect to the requested
    layers only), the second backward of each requested layer, then the graph is freed. Products
    and their average are summed in the same order as ``BlockHessian``'s, so both give the same
    numbers. ``loss`` (the mean over the batches) comes from the first pass (or a forward pass of
    its own if read before any product). ``passes`` counts the passes, ``graph_s`` the seconds of
    their forwards and first backwards.
    """

    def __init__(self, model: nn.Module, batches: Sequence[dict[str, Tensor]],
                 blocks: list[list[tuple[str, nn.Parameter]]] | None = None) -> None:
        super().__init__(model, batches, blocks)
        self.model, self.batches = model, list(batches)
        self._loss: float | None = None
        self._closed = False
        self.passes, self.graph_s = 0, 0.0

    def close(self) -> None:
        self._closed = True

    @property
    def loss(self) -> float:
        """The mean loss over the batches."""
        if self._loss is None:
            with torch.no_grad():
                self._loss = sum(float(task_loss(self.model, b)) for b in self.batches) / len(self.batches)
        return self._loss

    def hvp(self, layer: int, v: Vector) -> Vector:
        """H_layer @ v, averaged over the batches (one pass over them)."""
        return self.hvp_many({layer: v})[layer]

    def hvp_many(self, vectors: dict[int, Vector]) -> dict[int, Vector]:
        """``{layer: H_layer @ v}`` for each ``{layer: v}``, in one pass over the batches."""
        if self._closed:
            raise RuntimeError("StreamedBlockHessian is closed")
        layers = list(vectors)
        if not layers:
            return {}
        params = [self.params[i] for i in layers]
        out: dict[int, Vector | None] = dict.fromkeys(layers)
        loss_mean = 0.0
        for batch in self.batches:
            t = time.perf_counter()
            loss, grads = _graph_gradients(self.model, batch, params)
            self.graph_s += time.perf_counter() - t
            loss_mean += float(loss.detach()) / len(self.batches)
            for k, i in enumerate(layers):  # the graph is kept until the last layer's product
                out[i] = _add(out[i], torch.autograd.grad(grads[k], self.params[i], grad_outputs=vectors[i],
                                                          retain_graph=k < len(layers) - 1))
            del loss, grads  # this batch's graph goes before the next is built
        self.passes += 1
        if self._loss is None:
            self._loss = loss_mean
        return {i: _mean(out[i], len(self.batches)) for i in layers}
