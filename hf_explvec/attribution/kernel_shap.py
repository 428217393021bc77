"""Kernel SHAP over an abstract coalition-value function: the seam every masking scheme plugs into.

[`kernel_shap`] owns the sampling ([`~hf_explvec.attribution.sampling`]), the evaluation stream and the
constrained regression ([`~hf_explvec.attribution.solver`]). What "a player is absent" means is up to
the caller's *value function*:

    value_fn(coalitions, input_index) -> values

- ``coalitions``: `torch.BoolTensor` of shape `(N, M)`, ``True`` where a player is present;
- ``input_index``: `torch.LongTensor` of shape `(N,)`, which of the ``B`` explained inputs each row
  belongs to (rows of several inputs are mixed in one call);
- returns `torch.Tensor` of shape `(N,)`, or `(N, K)` to explain ``K`` outputs at once.

Both arguments are on the requested `device`. ``N <= batch_size``. Rows arrive grouped by input: all rows
of input 0, then all of input 1, and so on, so a call holds a few runs of consecutive inputs (a value
function may exploit the runs, as [`~hf_explvec.attribution.mask_patches`] does on CPU, but must not rely
on them for correctness). The rows of each input include its empty (all ``False``) and full (all
``True``) coalition, so the function needs no special cases. The calls run under
`torch.inference_mode()`, and the values it returns are only read before the next call.

Examples of value functions: painting pixels of image patches with a baseline
([`~hf_explvec.attribution.patch_kernel_shap`] builds one); replacing a ViT's patch embeddings of absent
patches by the embedding of the baseline patch (the same game as painting pixels when the grids match,
since the patch embedding is a per-patch linear map, and the embedding is computed once per input instead
of once per coalition); dropping absent tokens from the sequence (a different game: no baseline).

Memory: the coalition stream of all ``B`` inputs is built up front, ``B * num_samples * M`` bools on
`device` plus one int64 index per row; explain very large batches in slices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .._validation import check_int
from ._forward import check_finite_values
from .sampling import make_generator, plan_coalitions, sample_coalitions
from .solver import solve_kernel_shap

__all__ = ["kernel_shap", "min_num_samples", "ValueFunction"]

logger = logging.getLogger(__name__)

ValueFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def min_num_samples(num_players: int) -> int:
    r"""Smallest accepted ``num_samples`` for ``M`` players: ``2 M``.

    Two evaluations go to the empty and the full coalition. Once efficiency is imposed, ``M - 1`` values
    remain unknown. With paired sampling a coalition and its complement give the *same* equation (``v(S)``
    and ``v(complement of S)`` both pin down ``sum_{i in S} phi_i``), so each pair brings one equation and
    the fit needs ``M - 1`` pairs: ``2 + 2 (M - 1) = 2 M`` evaluations. (Even then a random draw may
    repeat a pair; the solver then warns and returns the minimum-norm solution. Useful budgets are many
    times larger.)
    """
    return 2 * num_players


def _check_num_samples(num_samples: object, num_players: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    needed = min_num_samples(num_players)
    if num_samples < needed:
        raise ValueError(
            f"num_samples={num_samples} is too small for {num_players} players: need at least {needed} "
            f"(the empty and full coalitions plus {num_players - 1} coalition/complement pairs, one equation "
            f"each, for the {num_players - 1} unknowns left once the values must sum to f(all) - f(none))"
        )
    return num_samples


def _evaluate(value_fn: ValueFunction, coalitions: torch.Tensor, index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Stream (T, M) coalitions through value_fn in chunks; return (T,) or (T, K) values."""
    total = coalitions.shape[0]
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            chunk = value_fn(coalitions[start:stop], index[start:stop])
            if not isinstance(chunk, torch.Tensor):
                raise TypeError(f"value_fn must return a torch.Tensor, got {type(chunk).__name__}")
            if chunk.dim() not in (1, 2) or chunk.shape[0] != stop - start:
                raise ValueError(
                    f"value_fn must return shape ({stop - start},) or ({stop - start}, K) for "
                    f"{stop - start} coalitions, got {tuple(chunk.shape)}"
                )
            if out is None:
                dtype = torch.promote_types(chunk.dtype, torch.float32)  # keeps float64 values in float64
                out = torch.empty((total,) + tuple(chunk.shape[1:]), dtype=dtype, device=chunk.device)
            elif chunk.shape[1:] != out.shape[1:]:
                raise ValueError(
                    f"value_fn returned shape {tuple(chunk.shape)} after {tuple(out.shape[1:])} per row before"
                )
            check_finite_values(chunk, index[start:stop], name="value_fn", unit="input index")
            out[start:stop] = chunk
    if out is None:  # unreachable: every input has its empty and full coalition
        raise RuntimeError("no coalition was evaluated")
    return out.clone()  # a normal tensor, usable outside inference mode


def kernel_shap(
    value_fn: ValueFunction,
    num_players: int,
    num_inputs: int,
    *,
    num_samples: int = 500,
    batch_size: int = 64,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Kernel SHAP (Lundberg & Lee, 2017) for ``B`` inputs of ``M`` players, given a coalition-value function.

    Coalitions are sampled by the Shapley kernel with paired (antithetic) sampling, the size pairs whose
    every coalition fits in the budget are enumerated (as ``shap.KernelExplainer`` does; with
    ``num_samples >= 2**M`` the result is the exact Shapley value), and the weighted least squares is
    solved with efficiency imposed exactly. Sampled coalitions carry equal regression weights (their sizes
    are already drawn from the kernel), enumerated ones their exact kernel weight. See
    [`~hf_explvec.attribution.sampling`] and [`~hf_explvec.attribution.solver`] for the math.

    Args:
        value_fn (`Callable[[torch.BoolTensor, torch.LongTensor], torch.Tensor]`):
            maps coalitions `(N, M)` and their input indices `(N,)` to values `(N,)` or `(N, K)`
            (see the module docstring for the contract).
        num_players (`int`): number of players ``M`` (at least 1).
        num_inputs (`int`): number of explained inputs ``B`` (at least 1).
        num_samples (`int`, *optional*, defaults to 500):
            evaluations of `value_fn` per input, including the empty and the full coalition; at least
            ``2 M`` (see [`min_num_samples`]). Capped at ``2**M``, where every coalition is evaluated.
        batch_size (`int`, *optional*, defaults to 64): most coalitions per `value_fn` call.
        seed (`int`, *optional*): seed of a private CPU `torch.Generator`; the same seed gives the same
            coalitions whatever `batch_size` and device. `None` draws fresh entropy. The global RNG is
            neither used nor advanced.
        device (`torch.device` or `str`, *optional*, defaults to CPU): where `value_fn` receives its
            arguments.

    Returns:
        `torch.Tensor` of shape `(B, M)` (or `(B, K, M)` when `value_fn` returns `(N, K)`), float32, on the
        device of the values: per-player values; for each input they sum to
        ``value(full) - value(empty)`` up to float32 rounding.

    Raises:
        TypeError: `value_fn` not callable or not returning a tensor, or an argument of the wrong type.
        ValueError: an argument out of range, `value_fn` returning a wrong shape, or NaN / infinite values for any
            coalition (the message names the input index; no value is returned for any input, since one
            non-finite evaluation would make that input's whole solution NaN).
    """
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable, got {type(value_fn).__name__}")
    m = check_int("num_players", num_players, 1)
    bsz = check_int("num_inputs", num_inputs, 1)
    num_samples = _check_num_samples(num_samples, m)
    batch_size = check_int("batch_size", batch_size, 1)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    device = torch.device("cpu") if device is None else torch.device(device)

    plan = plan_coalitions(m, num_samples - 2)
    generator = make_generator(seed)
    sampled = sample_coalitions(plan, bsz, generator)  # (B, S, M) on CPU
    regression = torch.cat([plan.enumerated.unsqueeze(0).expand(bsz, -1, -1), sampled], dim=1)  # (B, R, M)
    rows = regression.shape[1]
    logger.debug(
        "Kernel SHAP: %d players, %d inputs, %d enumerated + %d sampled coalitions per input (exact=%s)",
        m,
        bsz,
        plan.enumerated.shape[0],
        plan.num_sampled,
        plan.is_exact,
    )

    # Per input: empty, full, then the regression rows; inputs one after another.
    endpoints = torch.stack([torch.zeros(m, dtype=torch.bool), torch.ones(m, dtype=torch.bool)])
    stream = torch.cat([endpoints.unsqueeze(0).expand(bsz, -1, -1), regression], dim=1)  # (B, R + 2, M)
    stream = stream.reshape(bsz * (rows + 2), m).to(device)
    index = torch.arange(bsz, device=device).repeat_interleave(rows + 2)
    values = _evaluate(value_fn, stream, index, batch_size)
    values = values.view((bsz, rows + 2) + tuple(values.shape[1:]))
    return solve_kernel_shap(regression, plan.weights, values[:, 2:], values[:, 0], values[:, 1])
