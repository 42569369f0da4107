"""Learned quantization scales: LSQ (Esser et al. 2020) for weights, LSQ+ (Bhalgat et al. 2020)
for activations. Used by ``quant=mkq`` through ``QuantSpec(learned="lsq")``.

Fake quantization with a trainable step ``s`` and (asymmetric) a trainable offset ``b``::

    v = (x - b) / s          q = round(clamp(v, qmin, qmax))          y = q * s + b

Gradients (straight-through for the rounding, written out in ``_LSQFunction.backward`` and
checked against a hand derivation in ``tests/quant/test_quant_learned.py``)::

    dy/dx = 1 if qmin <= v <= qmax else 0
    dy/ds = q - v           inside the range;   qmin or qmax (= q) where clipped
    dy/db = 0               inside the range;   1 where clipped

The gradients of ``s`` and ``b`` are summed over the elements each one quantizes and multiplied
by LSQ's gradient scale ``g = 1 / sqrt(N * Qp)`` (``N``: elements per scale for a weight,
features per example for an activation; ``Qp = qmax``), which keeps the step's update in
proportion to the weights' (``scale_grad="lsq"``). ``scale_grad="lsq_unscaled"`` uses ``g = 1``
(LSQ's own ablation).

**MKQ-BERT's scale gradient is not implemented.** The paper (Tang et al., arXiv 2203.13483)
proposes its own gradient for the scale, but only its abstract was reachable offline (the
``search`` tool found the arXiv, Papers-with-Code and aggregator abstract pages, and no code or
full text); we did not guess a formula. ``quant=mkq`` therefore uses LSQ with its gradient
scaling, the rule MKQ-BERT positions itself against and the one KDLSQ-BERT combines with
distillation.

Initialisation from data, not constants:

* weights: at ``from_float``, the per-group step that minimises the squared quantization error of
  the weight over clipping ratios ``1.0 .. 0.3`` of its max |w| (outlier weights would otherwise
  make a 4-bit max-abs step far too coarse);
* activations: during a calibration pass (``surgery.calibration``), the same search on each
  batch's range, averaged over the batches. A quantizer that meets its first training batch
  uninitialised initialises from that batch; one evaluated before any data raises.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qbert.quant.granularity import resolve_groups
from qbert.quant.primitives import MIN_SCALE, check_bits, qrange

CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(15))  # 1.0 .. 0.3


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (the shape of a scale or offset)."""
    if t.shape == shape:
        return t
    lead = t.ndim - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1]
    return t.sum(dim=dims, keepdim=True).reshape(shape) if dims else t.reshape(shape)


class _FloorSTE(torch.autograd.Function):
    """``max(x, floor)`` forward, identity backward: a step pushed to (or below) its floor still
    gets its gradient, so training can move it back up (``clamp`` would give it 0 there)."""

    @staticmethod
    def forward(ctx, x: Tensor, floor: float) -> Tensor:
        return x.clamp(min=floor)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def floor_ste(x: Tensor, floor: float = MIN_SCALE) -> Tensor:
    """``x`` floored at ``floor`` with a straight-through (identity) gradient."""
    return _FloorSTE.apply(x, floor)


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


class _LSQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, offset: Tensor, qmin: int, qmax: int, grad_scale: float) -> Tensor:
        ctx.save_for_backward(x, scale, offset)
        ctx.qmin, ctx.qmax, ctx.grad_scale = qmin, qmax, grad_scale
        return torch.round(((x - offset) / scale).clamp(qmin, qmax)) * scale + offset

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, scale, offset = ctx.saved_tensors
        v = (x - offset) / scale
        inside = (v >= ctx.qmin) & (v <= ctx.qmax)
        q = torch.round(v.clamp(ctx.qmin, ctx.qmax))
        grad_x = grad * inside
        grad_scale = grad_offset = None
        if ctx.needs_input_grad[1]:
            grad_scale = _sum_to(grad * (q - torch.where(inside, v, torch.zeros_like(v))), scale.shape) * ctx.grad_scale
        if ctx.needs_input_grad[2]:
            grad_offset = _sum_to(grad * (~inside), offset.shape) * ctx.grad_scale
        return grad_x, grad_scale, grad_offset, None, None, None


def lsq_fake_quantize(x: Tensor, scale: Tensor, offset: Tensor | float, bits: int, symmetric: bool,
                      grad_scale: float = 1.0) -> Tensor:
    """``round(clamp((x - offset) / scale)) * scale + offset`` with LSQ gradients for all three.

    ``scale`` (and ``offset``) broadcast against ``x``; a scale under ``MIN_SCALE`` (zero or
    negative included) is floored there in the forward pass, and its gradient passes the floor
    unchanged (straight-through), so a step driven to the floor is still pushed back by the loss."""
    qmin, qmax = qrange(bits, symmetric)
    offset = torch.as_tensor(offset, dtype=x.dtype, device=x.device)
    scale = floor_ste(scale, MIN_SCALE)
    return _LSQFunction.apply(x, scale, offset, qmin, qmax, grad_scale)


def grad_scale_for(rule: str, per_scale: int, qmax: int) -> float:
    """LSQ's ``1 / sqrt(N * Qp)``, or 1 for ``lsq_unscaled``."""
    return 1.0 if rule == "lsq_unscaled" else 1.0 / math.sqrt(max(per_scale, 1) * qmax)


@torch.no_grad()
def mse_range(x: Tensor, bits: int, symmetric: bool, dim: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
    """The clipped range ``(lo, hi)`` (reduced over ``dim``, kept) with the least squared
    quantization error of ``x``, among ``CLIP_RATIOS`` of its min/max range."""
    dims = tuple(range(x.ndim)) if dim is None else dim
    x = x.float()
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    if symmetric:
        hi = torch.maximum(lo.abs(), hi.abs())
        lo = -hi
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    qmin, qmax = qrange(bits, symmetric)
    best_err, best_lo, best_hi = None, lo, hi
    for r in CLIP_RATIOS:
        c_lo, c_hi = lo * r, hi * r
        scale = ((c_hi - c_lo) / (qmax - qmin)).clamp(min=MIN_SCALE)
        offset = torch.zeros_like(scale) if symmetric else c_lo - qmin * scale
        err = (torch.round(((x - offset) / scale).clamp(qmin, qmax)) * scale + offset - x).square().sum(dim=dims, keepdim=True)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, c_lo, best_lo), torch.where(better, c_hi, best_hi)
    return best_lo, best_hi


class _Learned(nn.Module):
    """Shared state handling: tolerate float checkpoints that lack the learned tensors."""

    _state_names: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        names = [prefix + n for n in self._state_names]
        absent = not any(n in state_dict for n in names)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if absent:  # a float checkpoint: keep the data-initialised values
            missing_keys[:] = [k for k in missing_keys if k not in names]


class LearnedWeightQuantizer(_Learned):
    """Symmetric fake quantization of a 2-D weight with one trainable step per row group."""

    _state_names = ("scale",)

    def __init__(self, bits: int, rows: int, groups=1, scale_grad: str = "lsq", name: str = "weight",
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.bits = check_bits(bits, f"{name}: w_bits")
        self.num_groups = resolve_groups(groups, rows, name)
        self.groups, self.scale_grad, self.name, self.symmetric = groups, scale_grad, name, True
        self.scale = nn.Parameter(torch.ones(self.num_groups, 1, 1, device=device))

    @torch.no_grad()
    def init_(self, w: Tensor) -> None:
        """Step from the weight itself: least-squared-error clipping per group."""
        wg = w.detach().reshape(self.num_groups, -1, w.shape[-1])
        lo, hi = mse_range(wg, self.bits, True, dim=(1, 2))
        self.scale.copy_((hi / qrange(self.bits, True)[1]).clamp(min=MIN_SCALE))

    def forward(self, w: Tensor) -> Tensor:
        wg = w.reshape(self.num_groups, -1, w.shape[-1])
        qmax = qrange(self.bits, True)[1]
        g = grad_scale_for(self.scale_grad, wg[0].numel(), qmax)
        return lsq_fake_quantize(wg, self.scale, 0.0, self.bits, True, g).reshape(w.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, groups={self.num_groups}, sym, learned={self.scale_grad}"


class LearnedActivationQuantizer(_Learned):
    """Per-tensor fake quantization of a Linear's input with a trainable step and, asymmetric
    (LSQ+), a trainable offset; initialised from calibration data (see module docstring).

    ``integer_zero_point``: the offset used is ``-round(-offset / step) * step``, the latent
    offset rounded onto the step's grid (straight-through gradient), so the quantizer is
    ``step * (q - zero_point)`` with an integer zero point that an integer kernel can fold in;
    without it the offset is any float (LSQ+)."""

    _state_names = ("scale", "offset", "initialized", "calibrated_batches")

    def __init__(self, bits: int, symmetric: bool = False, scale_grad: str = "lsq",
                 device: torch.device | str | None = None, integer_zero_point: bool = False) -> None:
        super().__init__()
        self.bits = check_bits(bits, "a_bits")
        self.symmetric, self.scale_grad, self.integer_zero_point = symmetric, scale_grad, integer_zero_point
        self.observing = False  # set by surgery.calibration(): initialise from these batches
        self.scale = nn.Parameter(torch.ones((), device=device))
        # Symmetric: the offset stays 0 and gets no gradient.
        self.offset = nn.Parameter(torch.zeros((), device=device), requires_grad=not symmetric)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("calibrated_batches", torch.zeros((), dtype=torch.long, device=device))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Fold one batch into the initial range: the running mean of the per-batch MSE-best
        ranges (the current range is read back from the step and offset)."""
        lo, hi = (r.reshape(()) for r in mse_range(x, self.bits, self.symmetric))
        qmin, qmax = qrange(self.bits, self.symmetric)
        n = int(self.calibrated_batches)
        if n > 0:
            old_lo = -qmax * self.scale if self.symmetric else self.offset + qmin * self.scale
            old_hi = old_lo + (qmax - qmin) * self.scale
            lo, hi = old_lo + (lo - old_lo) / (n + 1), old_hi + (hi - old_hi) / (n + 1)
        self.calibrated_batches += 1
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=MIN_SCALE)
        self.scale.copy_(scale)
        self.offset.copy_(torch.zeros_like(scale) if self.symmetric else lo - qmin * scale)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.observing or (self.training and not bool(self.initialized)):
            self.observe(x)
        elif not bool(self.initialized):
            raise RuntimeError(
                "LearnedActivationQuantizer has no scale yet and is in eval mode; run a calibration "
                "pass (`with qbert.quant.calibration(model): model(batch)`) or train first")
        qmin, qmax = qrange(self.bits, self.symmetric)
        per_example = x[0].numel() if x.ndim > 1 else x.numel()
        g = grad_scale_for(self.scale_grad, per_example, qmax)
        return lsq_fake_quantize(x, self.scale, self.effective_offset(), self.bits, self.symmetric, g)

    def effective_offset(self) -> Tensor:
        """The offset the quantizer computes with (see the class docstring)."""
        if not self.integer_zero_point or self.symmetric:
            return self.offset
        step = floor_ste(self.scale, MIN_SCALE)
        return round_ste(self.offset / step) * step

    @torch.no_grad()
    def zero_point(self) -> Tensor:
        """``-effective_offset / step``: exactly an integer (as a float tensor) with ``integer_zero_point``."""
        ratio = self.offset / self.scale.clamp(min=MIN_SCALE)
        return -torch.round(ratio) if self.integer_zero_point and not self.symmetric else -ratio

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym" + (", integer zero point" if self.integer_zero_point else "")
        return f"bits={self.bits}, {kind}, learned={self.scale_grad}"
