"""The Kernel SHAP regression: weighted least squares with the efficiency constraint imposed exactly.

For one input with coalitions ``z_r`` (rows of ``Z``), weights ``w_r`` and values ``v(z_r)``, Kernel SHAP
solves

    minimise   sum_r w_r (v(z_r) - v(0) - z_r . phi)^2
    subject to sum_i phi_i = v(1) - v(0) =: delta

where ``v(0)`` and ``v(1)`` are the values of the empty and the full coalition.

The constraint is imposed exactly by eliminating the last player (as ``shap.KernelExplainer`` does):
``phi_M = delta - sum_{j<M} phi_j``, so each row becomes ``y_r - z_rM delta = sum_{j<M} (z_rj - z_rM)
phi_j``, an unconstrained weighted least squares in ``M - 1`` unknowns. Its normal equations are solved
by a batched Cholesky factorisation in float64, then ``phi_M`` is set from the constraint, so the values
sum to ``delta`` to float64 precision. This is the same minimiser as the symmetric KKT system

    [ A    1 ] [ phi ]   [ b     ]
    [ 1^T  0 ] [ mu  ] = [ delta ],   A = Z^T W Z,  b = Z^T W (v - v(0)),

which is the fallback: where the Cholesky factorisation fails or is nearly singular (too few distinct
coalitions to pin down every value), the KKT system is solved by SVD least squares (``gelsd``), whose
minimum-norm solution still satisfies the constraint exactly (a constrained least-squares problem always
has a minimiser, so the system is consistent), and a warning is logged.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["solve_kernel_shap"]

logger = logging.getLogger(__name__)

# Inputs solved per call, to bound the float64 copy of the coalition matrix.
_SOLVE_CHUNK = 256
# Smallest accepted squared ratio of the Cholesky factor's smallest to largest diagonal entry.
_MIN_PIVOT_RATIO = 1e-11


def _kkt_lstsq(a: torch.Tensor, b: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Min-norm solve of the KKT systems. a: (B, M, M), b: (B, M, K), delta: (B, K); float64."""
    bsz, m, _ = b.shape
    kkt = a.new_zeros(bsz, m + 1, m + 1)
    kkt[:, :m, :m] = a
    # Scale the constraint row and column to the size of A (phi is unchanged, mu rescaled).
    scale = a.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300).view(bsz, 1)
    kkt[:, :m, m] = scale
    kkt[:, m, :m] = scale
    rhs = torch.cat([b, (delta * scale).unsqueeze(1)], dim=1)  # (B, M + 1, K)
    device = a.device
    # gelsd (SVD) is CPU-only in torch and decides the rank reliably; the fallback is rare.
    solution = torch.linalg.lstsq(kkt.cpu(), rhs.cpu(), driver="gelsd").solution
    return solution[:, :m].to(device)


def _solve_chunk(
    z: torch.Tensor, w: torch.Tensor, y: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z: (b, R, M), w: (b, R), y: (b, R, K) (centred on v(0)), delta: (b, K); float64.

    Returns phi (b, M, K) and a bool (b,) marking the inputs that took the rank-deficient fallback.
    """
    m = z.shape[-1]
    if m == 1:
        return delta.unsqueeze(1), torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    last = z[..., m - 1 :]  # (b, R, 1)
    zr = z[..., : m - 1] - last  # (b, R, M - 1)
    yr = y - last * delta.unsqueeze(1)  # (b, R, K)
    zrw = zr * w.unsqueeze(-1)
    a = zrw.transpose(1, 2) @ zr  # (b, M - 1, M - 1)
    rhs = zrw.transpose(1, 2) @ yr  # (b, M - 1, K)
    chol, info = torch.linalg.cholesky_ex(a)
    diag = chol.diagonal(dim1=1, dim2=2).abs()
    ratio = (diag.amin(dim=1) / diag.amax(dim=1).clamp_min(1e-300)) ** 2
    bad = (info != 0) | ~(ratio > _MIN_PIVOT_RATIO)
    u = torch.cholesky_solve(rhs, chol)  # (b, M - 1, K)
    phi = torch.cat([u, (delta - u.sum(dim=1)).unsqueeze(1)], dim=1)
    if bool(bad.any()):
        zw = z[bad] * w[bad].unsqueeze(-1)
        full_a = zw.transpose(1, 2) @ z[bad]
        full_b = zw.transpose(1, 2) @ y[bad]
        phi[bad] = _kkt_lstsq(full_a, full_b, delta[bad])
    return phi, bad


def solve_kernel_shap(
    coalitions: torch.Tensor,
    weights: torch.Tensor,
    values: torch.Tensor,
    empty_value: torch.Tensor,
    full_value: torch.Tensor,
) -> torch.Tensor:
    r"""Shapley value estimates from evaluated coalitions (constrained weighted least squares).

    Args:
        coalitions (`torch.BoolTensor` of shape `(B, R, M)`): the evaluated coalitions of each input,
            without the empty and the full one (``R`` may be 0).
        weights (`torch.Tensor` of shape `(R,)` or `(B, R)`): regression weight of each row, e.g.
            [`CoalitionPlan.weights`]. Any positive scale.
        values (`torch.Tensor` of shape `(B, R)` or `(B, R, K)`): value of each coalition, for ``K``
            outputs explained at once.
        empty_value (`torch.Tensor` of shape `(B,)` or `(B, K)`): value of the empty coalition.
        full_value (`torch.Tensor` of shape `(B,)` or `(B, K)`): value of the full coalition.

    Returns:
        `torch.Tensor` of shape `(B, M)` (or `(B, K, M)` when `values` is 3-D), float32, on the device of
        `values`: per-player values summing to ``full_value - empty_value`` per input (and output).
    """
    if coalitions.dim() != 3:
        raise ValueError(f"coalitions must have shape (B, R, M), got {tuple(coalitions.shape)}")
    bsz, rows, m = coalitions.shape
    squeeze = values.dim() == 2
    if squeeze:
        values, empty_value, full_value = values.unsqueeze(-1), empty_value.unsqueeze(-1), full_value.unsqueeze(-1)
    if values.shape[:2] != (bsz, rows):
        raise ValueError(f"values must have shape ({bsz}, {rows}[, K]) to match coalitions, got {tuple(values.shape)}")
    k = values.shape[-1]
    if empty_value.shape != (bsz, k) or full_value.shape != (bsz, k):
        raise ValueError(
            f"empty_value and full_value must have shape ({bsz},) or ({bsz}, {k}), "
            f"got {tuple(empty_value.shape)} and {tuple(full_value.shape)}"
        )
    device = values.device
    weights = weights.to(device=device, dtype=torch.float64)
    if weights.dim() == 1:
        weights = weights.expand(bsz, rows)
    if weights.shape != (bsz, rows):
        raise ValueError(f"weights must have shape ({rows},) or ({bsz}, {rows}), got {tuple(weights.shape)}")

    out = torch.empty(bsz, m, k, dtype=torch.float32, device=device)
    rank_deficient = 0
    for start in range(0, bsz, _SOLVE_CHUNK):
        sl = slice(start, min(start + _SOLVE_CHUNK, bsz))
        z = coalitions[sl].to(device=device, dtype=torch.float64)  # (b, R, M)
        v0 = empty_value[sl].to(torch.float64)
        y = values[sl].to(torch.float64) - v0.unsqueeze(1)  # (b, R, K)
        delta = full_value[sl].to(torch.float64) - v0  # (b, K)
        phi, bad = _solve_chunk(z, weights[sl], y, delta)
        rank_deficient += int(bad.sum())
        out[sl] = phi.to(torch.float32)
    if rank_deficient:
        logger.warning(
            "Kernel SHAP: for %d of %d inputs the sampled coalitions do not determine all %d values "
            "(the least-squares system is rank deficient); returning minimum-norm solutions. "
            "Increase num_samples.",
            rank_deficient,
            bsz,
            m,
        )
    out = out.transpose(1, 2)  # (B, K, M)
    return out.squeeze(1) if squeeze else out
