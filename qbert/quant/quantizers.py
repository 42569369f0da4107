"""Stateful quantizers: small ``nn.Module``s that hold only settings and range buffers.

* ``WeightQuantizer`` recomputes its group ranges from the *current* weight at every forward
  (quantization-aware training: the latent float weight moves, the grid follows it). It holds
  no buffers, so it adds nothing to a state_dict.
* ``ActivationQuantizer`` keeps an exponential moving average of the batch range (Q8BERT): in
  training mode (or inside ``surgery.calibration``) each batch updates
  ``running = momentum * running + (1 - momentum) * batch``, the first batch initialising it;
  in eval mode the range is frozen. Symmetric mode tracks ``max|x|`` (``running_min`` is kept
  equal to ``-running_max``).

  With ``dynamic=True`` (dynamic post-training quantization, Q8BERT's baseline) the range is
  instead taken from the current batch at every forward, in training and eval alike; nothing is
  stored and no calibration is needed (the buffers stay at their "not observed" values).

  **Eval before any range was observed raises** ``RuntimeError``: passing through would
  silently report a float model as quantized. Observe ranges first (train, or
  ``with calibration(model): model(batch)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qbert.quant.granularity import Groups, group_qparams, group_view
from qbert.quant.primitives import (
    FLOAT_BITS,
    RANGE_METHODS,
    RangeMethod,
    check_bits,
    compute_qparams,
    fake_quantize,
    quantize,
    range_from_tensor,
)


class WeightQuantizer(nn.Module):
    """Fake-quantizes a 2-D weight with per-group ranges taken from the weight itself."""

    def __init__(
        self,
        bits: int,
        groups: Groups = 1,
        symmetric: bool = True,
        range_method: RangeMethod = "minmax",
        percentile: float = 99.99,
        name: str = "weight",
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits, f"{name}: w_bits")
        if range_method not in RANGE_METHODS:
            raise ValueError(f"{name}: range={range_method!r}, expected one of {RANGE_METHODS}")
        self.groups, self.symmetric = groups, symmetric
        self.range_method, self.percentile, self.name = range_method, percentile, name

    def qparams(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Per-group ``(scale, zero_point)``, shaped ``[G, 1, 1]``."""
        return group_qparams(
            w, self.groups, self.bits, self.symmetric, self.range_method, self.percentile, self.name
        )

    def forward(self, w: Tensor) -> Tensor:
        if self.bits == FLOAT_BITS:
            return w
        scale, zero_point = self.qparams(w)
        wg = group_view(w, self.groups, self.name)
        return fake_quantize(wg, scale, zero_point, self.bits, self.symmetric).reshape(w.shape)

    def quantize_int(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Export: ``(q int32 [rows, cols], scale [G,1,1], zero_point [G,1,1])``."""
        scale, zero_point = self.qparams(w)
        q = quantize(group_view(w, self.groups, self.name), scale, zero_point, self.bits, self.symmetric)
        return q.reshape(w.shape), scale, zero_point

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"bits={self.bits}, groups={self.groups}, {kind}, range={self.range_method}"


class ActivationQuantizer(nn.Module):
    """Fake-quantizes activations with a per-tensor EMA range (see module docstring)."""

    def __init__(
        self,
        bits: int,
        symmetric: bool = True,
        momentum: float = 0.9,
        range_method: RangeMethod = "minmax",
        percentile: float = 99.99,
        device: torch.device | str | None = None,
        dynamic: bool = False,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits, "a_bits")
        self.dynamic = dynamic
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
        if range_method not in RANGE_METHODS:
            raise ValueError(f"range={range_method!r}, expected one of {RANGE_METHODS}")
        self.symmetric, self.momentum = symmetric, momentum
        self.range_method, self.percentile = range_method, percentile
        self.observing = False  # set by surgery.calibration(): update ranges in eval mode
        self.register_buffer("running_min", torch.zeros((), device=device))
        self.register_buffer("running_max", torch.zeros((), device=device))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Fold one batch's range into the running EMA."""
        lo, hi = range_from_tensor(x, self.range_method, self.percentile)
        lo, hi = lo.float(), hi.float()
        if self.symmetric:
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi
        if bool(self.initialized):
            m = self.momentum
            lo = m * self.running_min + (1.0 - m) * lo
            hi = m * self.running_max + (1.0 - m) * hi
        self.running_min.copy_(lo)
        self.running_max.copy_(hi)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits == FLOAT_BITS:
            return x
        if self.dynamic:
            lo, hi = range_from_tensor(x, self.range_method, self.percentile)
            scale, zero_point = compute_qparams(lo, hi, self.bits, self.symmetric)
            return fake_quantize(x, scale, zero_point, self.bits, self.symmetric)
        if self.training or self.observing:
            self.observe(x)
        elif not bool(self.initialized):
            raise RuntimeError(
                "ActivationQuantizer has observed no range yet and is in eval mode; train, or "
                "run a few batches under `qbert.quant.calibration(model)`, before evaluating"
            )
        scale, zero_point = compute_qparams(self.running_min, self.running_max, self.bits, self.symmetric)
        return fake_quantize(x, scale, zero_point, self.bits, self.symmetric)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # A float checkpoint has no observer state: load it as "not observed yet" instead of
        # failing strict loading. Eval still refuses to run until a range is observed.
        names = [prefix + n for n in ("running_min", "running_max", "initialized")]
        absent = not any(n in state_dict for n in names)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if absent:
            missing_keys[:] = [k for k in missing_keys if k not in names]

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"bits={self.bits}, {kind}, " + ("dynamic" if self.dynamic else f"momentum={self.momentum}")
