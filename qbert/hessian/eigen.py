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


def power_iteration(hvp: HVP, shapes: Sequence[torch.Size], generator: torch.Generator, like: Tensor,
                    max_iters: int = 50, tol: float = 1e-3) -> EigenEstimate:
    """Top-magnitude eigenvalue of a symmetric operator.

    Converged when the relative change of the eigenvalue estimate falls under ``tol``. Power
    iteration finds the eigenvalue of largest *magnitude*, which can be negative (a saddle
    direction); its sign is kept. A non-finite estimate raises ``FloatingPointError``.
    """
    v = random_vector(shapes, generator, like)
    v = [x / norm(v) for x in v]
    history: list[float] = []
    eigenvalue, converged = math.nan, False
    for _ in range(max_iters):
        hv = hvp(v)
        estimate = float(dot(hv, v))
        if not math.isfinite(estimate):
            raise FloatingPointError(f"non-finite eigenvalue estimate {estimate} after {len(history)} iterations")
        history.append(estimate)
        size = norm(hv)
        if float(size) == 0.0:  # v is in the null space: the block's Hessian acts as zero
            eigenvalue, converged = 0.0, True
            break
        v = [x / size for x in hv]
        if len(history) > 1 and abs(estimate - eigenvalue) <= tol * (abs(eigenvalue) + 1e-12):
            eigenvalue, converged = estimate, True
            break
        eigenvalue = estimate
    return EigenEstimate(eigenvalue, v, len(history), converged, history)


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
    t = torch.tensor(values, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"non-finite trace sample among {values}")
    stderr = float(t.std() / math.sqrt(samples)) if samples > 1 else math.inf
    return TraceEstimate(float(t.mean()), stderr, samples)
