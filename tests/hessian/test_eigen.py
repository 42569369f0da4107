"""Power iteration and Hutchinson's trace against exact linear algebra."""

from __future__ import annotations

import math

import pytest
import torch

from tiny_bert import tiny_batch, tiny_model
from test_hvp import explicit_block_hessian, unflat
from qbert.hessian import BlockHessian, hutchinson_trace, power_iteration


def matrix_operator(A: torch.Tensor):
    return lambda v: [A @ v[0]]


def like(dtype=torch.float64):
    return torch.zeros((), dtype=dtype)


@pytest.mark.parametrize("layer", [0, 1])
def test_power_iteration_matches_eigvalsh_on_a_real_block_hessian(layer):
    model, batch = tiny_model(), tiny_batch()
    H = explicit_block_hessian(model, batch, layer)
    eigs = torch.linalg.eigvalsh(H)
    top = eigs[eigs.abs().argmax()]  # power iteration finds the largest magnitude, with its sign
    with BlockHessian(model, [batch]) as op:
        est = power_iteration(lambda v: op.hvp(layer, v), op.shapes(layer), torch.Generator().manual_seed(0),
                              like(), max_iters=3000, tol=1e-9)
    assert est.converged
    assert abs(est.value - float(top)) / abs(float(top)) <= 1e-3
    # the vector is an eigenvector: H v = lambda v
    v = torch.cat([x.reshape(-1) for x in est.vector])
    assert torch.allclose(H @ v, est.value * v, atol=1e-2 * abs(est.value))


def test_a_negative_dominant_eigenvalue_keeps_its_sign():
    A = torch.diag(torch.tensor([-5.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    est = power_iteration(matrix_operator(A), [torch.Size([4])], torch.Generator().manual_seed(0), like(),
                          max_iters=500, tol=1e-10)
    assert est.converged and est.value == pytest.approx(-5.0, rel=1e-6)


def test_no_convergence_is_reported_not_hidden():
    # eigenvalues 1 and 0.999: the relative change stays above tol for a long time
    A = torch.diag(torch.tensor([1.0, 0.999, 0.1], dtype=torch.float64))
    est = power_iteration(matrix_operator(A), [torch.Size([3])], torch.Generator().manual_seed(0), like(),
                          max_iters=3, tol=1e-12)
    assert not est.converged and est.iterations == 3 and len(est.history) == 3


def test_a_non_finite_estimate_raises():
    A = torch.eye(3, dtype=torch.float64) * math.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        power_iteration(matrix_operator(A), [torch.Size([3])], torch.Generator().manual_seed(0), like())


def test_power_iteration_is_seeded():
    A = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    A = A + A.T
    run = lambda s: power_iteration(matrix_operator(A), [torch.Size([6])], torch.Generator().manual_seed(s),  # noqa: E731
                                    like(), max_iters=7, tol=1e-12).history
    assert run(0) == run(0) and run(0) != run(1)


def test_hutchinson_converges_to_the_exact_trace():
    model, batch = tiny_model(), tiny_batch()
    H = explicit_block_hessian(model, batch, 1)
    exact = float(torch.trace(H))
    with BlockHessian(model, [batch]) as op:
        shapes = op.shapes(1)
        errors = {}
        for n in (16, 1024):
            est = hutchinson_trace(lambda v: op.hvp(1, v), shapes, torch.Generator().manual_seed(n), like(), n)
            assert abs(est.value - exact) <= 4 * est.stderr  # unbiased, within its own error bar
            errors[n] = est.stderr
    assert errors[1024] < errors[16] / 4  # the error bar shrinks as 1/sqrt(samples)
    # the exact variance of a Rademacher probe: 2 * sum of squared off-diagonals
    off = H - torch.diag(torch.diag(H))
    assert errors[1024] == pytest.approx(math.sqrt(2 * float((off ** 2).sum()) / 1024), rel=0.25)


def test_hutchinson_is_exact_on_a_diagonal_operator():
    A = torch.diag(torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64))
    est = hutchinson_trace(matrix_operator(A), [torch.Size([3])], torch.Generator().manual_seed(0), like(), 5)
    assert est.value == pytest.approx(4.0) and est.stderr == pytest.approx(0.0)
