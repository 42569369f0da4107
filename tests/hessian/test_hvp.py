"""Hessian-vector products against an explicit block Hessian and finite differences."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.func import functional_call

from tiny_bert import HEADS, tiny_batch, tiny_model
from qbert.hessian import BlockHessian, eager_attention, layer_blocks, task_loss
from qbert.hessian import hvp as hvp_module
from qbert.hessian.hvp import StreamedBlockHessian
from qbert.data.features import model_inputs


def explicit_block_hessian(model, batch, layer: int) -> torch.Tensor:
    """The layer block's Hessian by torch.autograd.functional.hessian of a flat-vector function."""
    block = layer_blocks(model)[layer]
    names, shapes = [n + ".weight" for n, _ in block], [p.shape for _, p in block]
    sizes = [p.numel() for _, p in block]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in block])
    inputs = model_inputs(batch)

    def loss_of(flat):
        params = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return functional_call(model, params, kwargs=inputs).loss

    return torch.autograd.functional.hessian(loss_of, flat0, vectorize=True)


def flat(v):
    return torch.cat([x.reshape(-1) for x in v])


def unflat(x, shapes):
    out, i = [], 0
    for s in shapes:
        n = torch.Size(s).numel()
        out.append(x[i:i + n].reshape(s))
        i += n
    return out


def test_blocks_are_the_six_linear_weights_of_each_layer(model):
    blocks = layer_blocks(model)
    assert len(blocks) == 2
    assert [n.split("layer.0.")[1] for n, _ in blocks[0]] == [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"]
    assert all(p.ndim == 2 for b in blocks for _, p in b)


@pytest.mark.parametrize("kind", list(HEADS))
@pytest.mark.parametrize("layer", [0, 1])
def test_hvp_matches_the_explicit_hessian_for_every_head(kind, layer):
    model, batch = tiny_model(kind), tiny_batch(kind)
    H = explicit_block_hessian(model, batch, layer)
    assert torch.allclose(H, H.T, atol=1e-10)
    with BlockHessian(model, [batch]) as op:
        v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        hv = flat(op.hvp(layer, unflat(v, op.shapes(layer))))
    assert torch.allclose(hv, H @ v, rtol=1e-8, atol=1e-10)


def test_hvp_matches_finite_differences_of_the_gradient(model, batch):
    layer = 1
    params = [p for _, p in layer_blocks(model)[layer]]
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)]
    with BlockHessian(model, [batch]) as op:
        hv = flat(op.hvp(layer, v))

    def grad_at(eps):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        g = torch.autograd.grad(task_loss(model, batch), params)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(eps * d)
        return flat(g)

    eps = 1e-5
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    assert torch.allclose(hv, fd, rtol=1e-5, atol=1e-7)


def test_several_batches_give_the_hessian_of_the_mean_loss(model):
    b1, b2 = tiny_batch(seed=1), tiny_batch(seed=2)
    H = (explicit_block_hessian(model, b1, 0) + explicit_block_hessian(model, b2, 0)) / 2
    with BlockHessian(model, [b1, b2]) as op:
        v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        hv = flat(op.hvp(0, unflat(v, op.shapes(0))))
    assert torch.allclose(hv, H @ v, rtol=1e-8, atol=1e-10)


def test_the_mode_is_the_callers(batch):
    """Dropout on (train mode) makes two operators differ; eval mode makes them equal."""
    model = tiny_model()
    model.config.hidden_dropout_prob = 0.5
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    v = None
    results = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        outs = []
        for _ in range(2):
            with BlockHessian(model, [batch]) as op:
                v = v or [torch.ones(s, dtype=torch.float64) for s in op.shapes(0)]
                outs.append(flat(op.hvp(0, v)))
        assert model.training == (mode == "train")  # BlockHessian left the mode alone
        results[mode] = torch.allclose(outs[0], outs[1])
    assert results == {"train": False, "eval": True}


def test_sdpa_has_no_double_backward_and_eager_attention_fixes_it(batch):
    model = tiny_model()
    model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="not implemented"):
        with BlockHessian(model, [batch]) as op:
            op.hvp(0, [torch.ones(s, dtype=torch.float64) for s in op.shapes(0)])
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
        with BlockHessian(model, [batch]) as op:
            op.hvp(0, [torch.ones(s, dtype=torch.float64) for s in op.shapes(0)])
    assert model.config._attn_implementation == "sdpa"


def test_a_batch_without_labels_is_refused(model, batch):
    batch = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.raises(ValueError, match="no loss"):
        BlockHessian(model, [batch])


def _vectors(op, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {i: [torch.randn(s, generator=g, dtype=torch.float64) for s in op.shapes(i)] for i in layers}


def test_the_streamed_operator_gives_the_kept_graphs_numbers(model):
    batches = [tiny_batch(seed=s) for s in (1, 2, 3)]
    H = sum(explicit_block_hessian(model, b, 1) for b in batches) / 3
    with BlockHessian(model, batches) as kept, StreamedBlockHessian(model, batches) as streamed:
        vs = _vectors(kept, [0, 1])
        a, b = kept.hvp_many(vs), streamed.hvp_many(vs)
        assert streamed.passes == 1  # both layers in one pass over the batches
        for i in (0, 1):
            assert all(torch.allclose(x, y, rtol=1e-12, atol=1e-14) for x, y in zip(a[i], b[i]))
        assert all(torch.allclose(x, y, rtol=1e-12, atol=1e-14)
                   for x, y in zip(streamed.hvp(1, vs[1]), kept.hvp(1, vs[1])))
        assert torch.allclose(flat(b[1]), H @ flat(vs[1]), rtol=1e-8, atol=1e-10)  # the mean loss's Hessian
        assert streamed.loss == pytest.approx(kept.loss, rel=1e-12)
        assert streamed.shapes(0) == kept.shapes(0) and streamed.num_parameters(1) == kept.num_parameters(1)
    with pytest.raises(RuntimeError, match="closed"):
        streamed.hvp(0, vs[0])


def test_the_streamed_loss_before_any_product_is_the_mean_loss(model):
    batches = [tiny_batch(seed=s) for s in (1, 2)]
    with StreamedBlockHessian(model, batches) as streamed, BlockHessian(model, batches) as kept:
        assert streamed.loss == pytest.approx(kept.loss, rel=1e-12) and streamed.passes == 0


class _GraphCensus:
    """Counts the autograd graph nodes of earlier batches still alive when each batch's graph is
    built: every node reachable from a batch's loss and create_graph gradients gets a sentinel in
    its ``metadata`` (stored on the C++ node, so it dies with the node). Memory, not timing."""

    def __init__(self, monkeypatch):
        self.sentinels: list[weakref.ref] = []
        self.alive_at_batch: list[int] = []
        self.per_batch: list[int] = []
        real = hvp_module._graph_gradients

        def tagging(model, batch, params):
            self.alive_at_batch.append(self.alive())
            loss, grads = real(model, batch, params)
            self.per_batch.append(self._tag([loss.grad_fn] + [g.grad_fn for block in grads for g in block]))
            return loss, grads

        monkeypatch.setattr(hvp_module, "_graph_gradients", tagging)

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.sentinels)

    def _tag(self, todo) -> int:
        seen = {}  # id -> node: holding them keeps the ids unique during the walk
        while todo:
            node = todo.pop()
            # AccumulateGrad nodes belong to the weights (shared by every batch), not to a graph
            if node is None or id(node) in seen or type(node).__name__ == "AccumulateGrad":
                continue
            seen[id(node)] = node
            sentinel = _Sentinel()
            node.metadata["qbert_test_sentinel"] = sentinel
            self.sentinels.append(weakref.ref(sentinel))
            todo.extend(f for f, _ in node.next_functions)
        return len(seen)


class _Sentinel:
    pass


def test_streaming_holds_one_batch_graph_where_kept_graphs_grow_with_the_batches(model, monkeypatch):
    batches = [tiny_batch(seed=s) for s in range(1, 5)]
    streamed_census = _GraphCensus(monkeypatch)
    streamed = StreamedBlockHessian(model, batches)
    streamed.hvp_many(_vectors(streamed, [0, 1]))
    streamed.hvp(1, _vectors(streamed, [1])[1])
    assert len(streamed_census.per_batch) == 8 and min(streamed_census.per_batch) > 100  # two passes, real graphs
    assert streamed_census.alive_at_batch == [0] * 8  # every earlier batch's graph freed before the next
    assert streamed_census.alive() == 0  # and the last one after the pass

    monkeypatch.undo()
    kept_census = _GraphCensus(monkeypatch)
    with BlockHessian(model, batches):
        graph = kept_census.per_batch[0]
        # one more graph per batch (less a dropped loss's own node)
        assert all(k * (graph - 1) <= alive <= k * graph for k, alive in enumerate(kept_census.alive_at_batch))
        assert kept_census.alive() >= 4 * (graph - 1)
    assert kept_census.alive() == 0  # close() frees them
