"""Power iteration (top eigenvalue) and Hutchinson (trace) on a Hessian-vector-product operator.

Vectors are lists of tensors (one per parameter of a block); ``hvp(v)`` returns ``H v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

Vector = list[Tensor]
HVP = Callable[[Vector], Vector]
# What ``PowerIteration`` stops on; analysis records and Hessian cache keys carry it.
STOPPING_RULE = "residual"


def dot(a: Vector, b: Vector) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def norm(a: Vector) -> Tensor:
    return dot(a, a).sqrt()


def random_vector(shapes: Sequence[torch.Size], generator: torch.Generator, like: Tensor,
                  kind: str = "normal") -> Vector:
    """A seeded random vector on ``like``'s device/dtype; ``rademacher`` draws +-1 entries."""
    out = []
    for shape in shapes:
        if kind == "rademacher":
            t = torch.randint(0, 2, shape, generator=generator).to(like.dtype) * 2 - 1
        else:
            t = torch.randn(shape, generator=generator, dtype=like.dtype)
        out.append(t.to(like.device))
    return out


@dataclass
class EigenEstimate:
    value: float  # the Rayleigh quotient at the last iterate: the eigenvalue of largest |.|, signed
    vector: Vector  # unit-norm eigenvector estimate
    iterations: int
    converged: bool
    history: list[float]
    residual: float = math.nan  # ||H v - value v|| / |value| at the last iterate (v: the unit vector multiplied)


class PowerIteration:
    """Power iteration as a state machine, for callers that form the products themselves (several
    layers in lockstep, one pass over the data per step): multiply ``vector`` by the operator,
    hand the product to ``step``, until ``done``; then ``result()``.

    Stopping rule: the residual. With the unit iterate ``v``, ``Hv`` and the Rayleigh quotient
    ``lam = v . Hv``, the iteration has converged when ``||Hv - lam v|| <= tol |lam|``. For a
    symmetric ``H`` some eigenvalue ``mu`` lies within ``||Hv - lam v||`` of ``lam`` (Weyl / Krylov-
    Bogolyubov), so a converged estimate is within ``tol`` (relative) of an eigenvalue, and of the
    top one once ``v`` leans towards the top eigenvector more than towards the others: with the
    top two eigenvalues ``l1``, ``l2`` and ``v = c1 e1 + c2 e2``, the error is
    ``c2^2 |l1 - l2|`` = ``(c2 / c1)`` x the residual, and power iteration shrinks ``c2 / c1`` by
    ``|l2 / l1|`` a step. (The earlier rule, relative change of ``lam`` between steps under
    ``tol``, leaves an error of about ``tol r^2 / (1 - r^2)`` for an eigenvalue ratio ``r``, 9 x tol
    at r = 0.95, and stops on a plateau near the second eigenvalue when the start leans towards
    it.) The residual comes from the product the step needs anyway: no extra Hessian-vector
    product.
    """

    def __init__(self, shapes: Sequence[torch.Size], generator: torch.Generator, like: Tensor,
                 max_iters: int = 50, tol: float = 1e-3) -> None:
        v = random_vector(shapes, generator, like)
        size = norm(v)
        self.vector: Vector = [x / size for x in v]
        self.max_iters, self.tol = max_iters, tol
        self.history: list[float] = []
        self.value, self.residual = math.nan, math.nan
        self.converged = self.done = False

    def step(self, hv: Vector) -> None:
        """Take ``hv`` = H @ ``self.vector``; update the estimate, the iterate and ``done``."""
        if self.done:
            raise RuntimeError("power iteration already finished")
        v = self.vector
        estimate = float(dot(hv, v))
        if not math.isfinite(estimate):
            raise FloatingPointError(f"non-finite eigenvalue estimate {estimate} after {len(self.history)} iterations")
        self.history.append(estimate)
        size = float(norm(hv))
        if size == 0.0:  # v is in the null space: the block's Hessian acts as zero
            self.value, self.residual, self.converged, self.done = 0.0, 0.0, True, True
            return
        residual = float(norm([h - estimate * x for h, x in zip(hv, v)]))
        self.value = estimate
        self.residual = residual / abs(estimate) if estimate != 0.0 else math.inf
        self.vector = [h / size for h in hv]
        if residual <= self.tol * abs(estimate):
            self.converged = self.done = True
        elif len(self.history) >= self.max_iters:
            self.done = True

    def result(self) -> EigenEstimate:
        return EigenEstimate(self.value, self.vector, len(self.history), self.converged, self.history, self.residual)


def power_iteration(hvp: HVP, shapes: Sequence[torch.Size], generator: torch.Generator, like: Tensor,
                    max_iters: int = 50, tol: float = 1e-3) -> EigenEstimate:
    """Top-magnitude eigenvalue of a symmetric operator.

    Converged when the residual ``||Hv - lam v||`` falls under ``tol |lam|`` (see
    ``PowerIteration``: the estimate is then within ``tol`` of an eigenvalue). Power iteration
    finds the eigenvalue of largest *magnitude*, which can be negative (a saddle direction); its
    sign is kept. A non-finite estimate raises ``FloatingPointError``.
    """
    it = PowerIteration(shapes, generator, like, max_iters, tol)
    while not it.done:
        it.step(hvp(it.vector))
    return it.result()


@dataclass
class TraceEstimate:
    value: float  # mean of z^T H z over the samples
    stderr: float  # standard error of that mean
    samples: int


def hutchinson_trace(hvp: HVP, shapes: Sequence[torch.Size], generator: torch.Generator, like: Tensor,
                     samples: int = 32) -> TraceEstimate:
    """Hutchinson's unbiased trace estimate E[z^T H z] with Rademacher z (HAWQ-v2's sensitivity)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    values = []
    for _ in range(samples):
        z = random_vector(shapes, generator, like, kind="rademacher")
        values.append(float(dot(hvp(z), z)))
    return trace_from_samples(values)


def trace_from_samples(values: Sequence[float]) -> TraceEstimate:
    """Mean and standard error of Hutchinson samples ``z^T H z``; non-finite ones raise."""
    samples = len(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"non-finite trace sample among {list(values)}")
    stderr = float(t.std() / math.sqrt(samples)) if samples > 1 else math.inf
    return TraceEstimate(float(t.mean()), stderr, samples)
