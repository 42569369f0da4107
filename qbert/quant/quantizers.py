"""Stateful quantizers: small ``nn.Module``s that hold only settings and range buffers.

* ``WeightQuantizer`` recomputes its group ranges from the *current* weight at every forward
  (quantization-aware training: the latent float weight moves, the grid follows it). With the
  ``minmax`` and ``percentile`` ranges it holds no buffers, so it adds nothing to a state_dict.

  With ``range_method="mse"`` the range is each group's min/max range times a clipping ratio
  (the one of least squared error on the grid, among 100 from 1.0 down to 0.2). Measured on one
  core of this project's 2-core CPU: a search takes 0.03 s for a 1536 x 384 matrix in 128 groups
  at 2 or 3 bits (0.14 s at 8 bits), against 0.004 s for its min/max fake quantization; for all
  36 Linear weights of MiniLM-L6, 0.6 s at 2 bits and 2.3 s at 8 bits, i.e. 30% to 120% of a
  QAT step (1.9 s, ``experiments/README.md``). So the ratios are searched at the first forward
  and again every ``refresh_steps`` training-mode forwards (``MSE_REFRESH_STEPS`` = 100: under
  1.5% of a step on average); in between, the range still follows the current weight (ratio x
  its current min/max), at the cost of a min/max range. In eval mode the ratios stay as they are (searched
  once if never searched). They are state: buffers ``clip_ratio`` ``[G, 1, 1]`` (0 = not searched
  yet) and ``clip_age`` (training forwards since the search), so a reloaded or resumed model
  quantizes exactly as it did; a checkpoint without them (a float one) loads as "not searched".
* ``ActivationQuantizer`` keeps an exponential moving average of the batch range (Q8BERT): in
  training mode (or inside ``surgery.calibration``) each batch updates
  ``running = momentum * running + (1 - momentum) * batch``, the first batch initialising it;
  in eval mode the range is frozen. Symmetric mode tracks ``max|x|`` (``running_min`` is kept
  equal to ``-running_max``).

  With ``dynamic=True`` (dynamic post-training quantization, Q8BERT's baseline) the range is
  instead taken from the current batch at every forward, in training and eval alike; nothing is
  stored and no calibration is needed (the buffers stay at their "not observed" values).
  ``per_token=True`` (dynamic only) takes one range per token (the last dimension) instead of
  one per batch: a token's outliers no longer widen the step of every other token.

  **Eval before any range was observed raises** ``RuntimeError``: passing through would
  silently report a float model as quantized. Observe ranges first (train, or
  ``with calibration(model): model(batch)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qbert.quant.granularity import Groups, group_clip_ratio, group_qparams, group_view, resolve_groups
from qbert.quant.primitives import (
    FLOAT_BITS,
    RANGE_METHODS,
    WEIGHT_RANGE_METHODS,
    RangeMethod,
    WeightRangeMethod,
    check_bits,
    compute_qparams,
    fake_quantize,
    quantize,
    range_from_tensor,
)


MSE_REFRESH_STEPS = 100  # range_method="mse": training forwards between two clipping-ratio searches


class WeightQuantizer(nn.Module):
    """Fake-quantizes a 2-D weight with per-group ranges taken from the weight itself.

    ``symmetric``/``full`` choose the grid (restricted, full symmetric, or asymmetric; see
    ``qbert.quant.primitives``); ``range_method``: ``minmax``, ``percentile`` or ``mse`` (see the
    module docstring); ``rows``: the weight's rows, to size the ``mse`` state up front (else it
    is sized at the first search)."""

    def __init__(
        self,
        bits: int,
        groups: Groups = 1,
        symmetric: bool = True,
        range_method: WeightRangeMethod = "minmax",
        percentile: float = 99.99,
        name: str = "weight",
        *,
        full: bool = False,
        rows: int | None = None,
        refresh_steps: int = MSE_REFRESH_STEPS,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits, f"{name}: w_bits")
        if range_method not in WEIGHT_RANGE_METHODS:
            raise ValueError(f"{name}: range={range_method!r}, expected one of {WEIGHT_RANGE_METHODS}")
        if full and not symmetric:
            raise ValueError(f"{name}: the full grid is symmetric; an asymmetric grid has all 2^bits levels already")
        if refresh_steps < 1:
            raise ValueError(f"{name}: refresh_steps={refresh_steps!r} must be >= 1")
        self.groups, self.symmetric, self.full = groups, symmetric, full
        self.range_method, self.percentile, self.name = range_method, percentile, name
        self.refresh_steps = refresh_steps
        self._age: int | None = None  # mse: training forwards since the last search (None: none yet)
        if range_method == "mse" and self.bits != FLOAT_BITS:
            shape = (resolve_groups(groups, rows, name), 1, 1) if rows else (0,)
            self.register_buffer("clip_ratio", torch.zeros(shape))
            self.register_buffer("clip_age", torch.zeros((), dtype=torch.int64))

    def _searched(self) -> bool:
        return self.clip_ratio.numel() > 0 and bool((self.clip_ratio > 0).all())

    @torch.no_grad()
    def _clip_ratio(self, w: Tensor) -> Tensor:
        """The mse clipping ratios ``[G, 1, 1]``: searched again when due (see module docstring)."""
        if self._age is None and self._searched():  # ratios loaded (load_state_dict, transformers)
            self._age = int(self.clip_age)
        if self.training and self._age is not None:
            self._age += 1
        if self._age is None or (self.training and self._age >= self.refresh_steps):
            ratio = group_clip_ratio(w, self.groups, self.bits, self.symmetric, self.full, self.name)
            if self.clip_ratio.shape != ratio.shape:
                self.clip_ratio = torch.zeros_like(ratio)
            self.clip_ratio.copy_(ratio)
            self._age = 0
        self.clip_age.fill_(self._age)
        return self.clip_ratio.to(w.device)

    def qparams(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Per-group ``(scale, zero_point)``, shaped ``[G, 1, 1]``."""
        ratio = self._clip_ratio(w) if self.range_method == "mse" else None
        return group_qparams(w, self.groups, self.bits, self.symmetric, self.range_method, self.percentile,
                             self.name, full=self.full, clip_ratio=ratio)

    def forward(self, w: Tensor) -> Tensor:
        if self.bits == FLOAT_BITS:
            return w
        scale, zero_point = self.qparams(w)
        wg = group_view(w, self.groups, self.name)
        return fake_quantize(wg, scale, zero_point, self.bits, self.symmetric, self.full).reshape(w.shape)

    def quantize_int(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Export: ``(q int32 [rows, cols], scale [G,1,1], zero_point [G,1,1])``."""
        scale, zero_point = self.qparams(w)
        q = quantize(group_view(w, self.groups, self.name), scale, zero_point, self.bits, self.symmetric, self.full)
        return q.reshape(w.shape), scale, zero_point

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # mse: take the stored ratios whatever their shape was sized as here; a checkpoint
        # without them (float, or from before the search) loads as "not searched yet".
        names = [prefix + n for n in ("clip_ratio", "clip_age")]
        if self.range_method == "mse" and self.bits != FLOAT_BITS:
            stored = state_dict.get(names[0])
            if stored is not None and stored.shape != self.clip_ratio.shape:
                self.clip_ratio = torch.zeros_like(stored, device=self.clip_ratio.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.range_method != "mse" or self.bits == FLOAT_BITS:
            return
        if not any(n in state_dict for n in names):  # new weights without ratios: search again
            missing_keys[:] = [k for k in missing_keys if k not in names]
            self.clip_ratio.zero_()
        self._age = None  # the next call takes the loaded ratios, or searches if there are none

    def extra_repr(self) -> str:
        kind = ("full" if self.full else "sym") if self.symmetric else "asym"
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
        per_token: bool = False,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits, "a_bits")
        if per_token and not dynamic:
            raise ValueError("per_token=True needs dynamic=True: a per-token range is taken at every forward")
        self.dynamic, self.per_token = dynamic, per_token
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
            lo, hi = range_from_tensor(x, self.range_method, self.percentile, dim=-1 if self.per_token else None)
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
        dynamic = "dynamic per token" if self.per_token else "dynamic"
        return f"bits={self.bits}, {kind}, " + (dynamic if self.dynamic else f"momentum={self.momentum}")
