"""Coalition sampling for Kernel SHAP: the Shapley kernel, the enumeration plan and the masks.

Pure tensor code. A *coalition* over ``M`` players is a boolean vector of shape ``(M,)`` whose ``True``
entries are the players that are present. This module decides which coalitions to evaluate and with
which regression weight; it never evaluates anything.

The scheme is the one of ``shap.KernelExplainer`` (Lundberg & Lee, 2017), with paired sampling
(Covert & Lee, 2021):

1. The Shapley kernel puts the total mass ``m(k) ∝ (M - 1) / (k (M - k))`` on the coalitions of size
   ``k`` (``1 <= k <= M - 1``), spread evenly over the ``C(M, k)`` coalitions of that size.
2. Size pairs ``{k, M - k}`` are visited from the outside in (``k = 1, 2, ...``). A pair is
   *enumerated* (every coalition of both sizes evaluated once, each weighted by its exact kernel
   weight) when the remaining budget, shared out in proportion to the remaining kernel mass, would
   give that pair at least as many draws as it has coalitions. The first pair that does not fit
   stops the enumeration. With a budget of at least ``2**M - 2`` every coalition is enumerated and
   Kernel SHAP returns the exact Shapley values.
3. The rest of the budget is *sampled*: a size ``k`` from the kernel restricted to the sizes not
   enumerated, then a uniform subset of that size, and always its complement next to it (paired,
   antithetic sampling). Because the sampling distribution already is the kernel, every sampled
   coalition carries the same regression weight: the remaining kernel mass divided by the number of
   sampled coalitions (importance weight ``kernel / proposal`` is constant).

Weights are normalised so that they sum to 1 over all coalitions of a plan.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CoalitionPlan",
    "plan_coalitions",
    "sample_coalitions",
    "shapley_kernel_size_mass",
    "make_generator",
]


def shapley_kernel_size_mass(num_players: int) -> torch.Tensor:
    r"""Kernel mass of each coalition size, normalised to sum to 1.

    Args:
        num_players (`int`): the number of players ``M`` (at least 2).

    Returns:
        `torch.Tensor` of shape `(M - 1,)` and dtype float64: entry ``k - 1`` is
        ``((M - 1) / (k (M - k))) / Z`` for ``k = 1 .. M - 1``.
    """
    if num_players < 2:
        raise ValueError(f"the Shapley kernel needs at least 2 players, got num_players={num_players}")
    k = torch.arange(1, num_players, dtype=torch.float64)
    mass = (num_players - 1) / (k * (num_players - k))
    return mass / mass.sum()


@dataclass(frozen=True)
class CoalitionPlan:
    r"""Which coalitions a Kernel SHAP run evaluates, and their regression weights.

    The same plan serves every explained input; only the sampled part differs between inputs.

    Attributes:
        num_players (`int`): number of players ``M``.
        enumerated (`torch.BoolTensor` of shape `(E, M)`): coalitions evaluated for every input, all of
            the enumerated sizes (``E`` may be 0).
        enumerated_weights (`torch.Tensor` of shape `(E,)`, float64): exact kernel weight of each.
        sample_sizes (`torch.LongTensor` of shape `(S,)`): coalition sizes left to sampling.
        sample_size_probs (`torch.Tensor` of shape `(S,)`, float64): probability of each of those sizes
            (the kernel restricted to them).
        num_sampled (`int`): sampled coalitions per input (pairs, plus one unpaired when odd).
        sampled_weight (`float`): regression weight of each sampled coalition.
    """

    num_players: int
    enumerated: torch.Tensor
    enumerated_weights: torch.Tensor
    sample_sizes: torch.Tensor
    sample_size_probs: torch.Tensor
    num_sampled: int
    sampled_weight: float

    @property
    def num_coalitions(self) -> int:
        """Regression rows per input: enumerated plus sampled (the empty and full coalitions excluded)."""
        return self.enumerated.shape[0] + self.num_sampled

    @property
    def is_exact(self) -> bool:
        """Whether every non-trivial coalition is enumerated, so the result is the exact Shapley value."""
        return self.num_sampled == 0 and self.enumerated.shape[0] == 2**self.num_players - 2

    @property
    def weights(self) -> torch.Tensor:
        """`torch.Tensor` of shape `(E + num_sampled,)`, float64: weight of each regression row."""
        sampled = torch.full((self.num_sampled,), self.sampled_weight, dtype=torch.float64)
        return torch.cat([self.enumerated_weights, sampled])


def _subsets_of_size(num_players: int, size: int) -> torch.Tensor:
    """All coalitions of one size, `(C(M, size), M)` bool, in lexicographic order of their members."""
    count = math.comb(num_players, size)
    # itertools iterates in C; np.fromiter packs the member lists without a Python-level loop.
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(num_players), size)),
        dtype=np.int64,
        count=count * size,
    )
    members = torch.from_numpy(flat).view(count, size)
    masks = torch.zeros(count, num_players, dtype=torch.bool)
    return masks.scatter_(1, members, True)


def plan_coalitions(num_players: int, num_coalitions: int) -> CoalitionPlan:
    r"""Split a per-input budget of coalitions between enumeration and paired sampling.

    Args:
        num_players (`int`): number of players ``M`` (at least 1).
        num_coalitions (`int`): regression rows per input, i.e. model evaluations minus the two for
            the empty and the full coalition (at least 0). Capped at ``2**M - 2``, where every
            coalition is enumerated.

    Returns:
        [`CoalitionPlan`]
    """
    m = num_players
    empty_bool = torch.zeros(0, m, dtype=torch.bool)
    empty_f64 = torch.zeros(0, dtype=torch.float64)
    if m < 2:
        # One player: efficiency alone determines its value; no coalition is needed.
        return CoalitionPlan(m, empty_bool, empty_f64, torch.zeros(0, dtype=torch.long), empty_f64, 0, 0.0)

    size_mass = shapley_kernel_size_mass(m)  # (M - 1,), index k - 1
    blocks, block_weights = [], []
    budget = num_coalitions
    remaining_mass = 1.0
    first_sampled_size = m  # sizes first_sampled_size .. m - first_sampled_size are sampled
    exhaustive = num_coalitions >= 2**m - 2  # Python int: exact even for large m
    for k in range(1, m // 2 + 1):
        sizes = (k,) if 2 * k == m else (k, m - k)
        count = sum(math.comb(m, s) for s in sizes)
        pair_mass = sum(size_mass[s - 1].item() for s in sizes)
        fits = exhaustive or (remaining_mass > 0 and budget * pair_mass / remaining_mass >= count)
        if not fits:
            first_sampled_size = k
            break
        for s in sizes:
            subsets = _subsets_of_size(m, s)
            blocks.append(subsets)
            block_weights.append(
                torch.full((subsets.shape[0],), size_mass[s - 1].item() / subsets.shape[0], dtype=torch.float64)
            )
        budget -= count
        remaining_mass -= pair_mass

    enumerated = torch.cat(blocks) if blocks else empty_bool
    enumerated_weights = torch.cat(block_weights) if block_weights else empty_f64
    if first_sampled_size == m:  # everything enumerated
        return CoalitionPlan(m, enumerated, enumerated_weights, torch.zeros(0, dtype=torch.long), empty_f64, 0, 0.0)

    sample_sizes = torch.arange(first_sampled_size, m - first_sampled_size + 1)
    probs = size_mass[sample_sizes - 1]
    mass_left = probs.sum().item()
    num_sampled = budget
    sampled_weight = mass_left / num_sampled if num_sampled > 0 else 0.0
    return CoalitionPlan(
        m, enumerated, enumerated_weights, sample_sizes, probs / mass_left, num_sampled, sampled_weight
    )


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU `torch.Generator`, seeded with `seed`, or from OS entropy when `seed` is None.

    It is independent of the global RNG: sampling neither reads nor advances `torch.manual_seed` state.
    """
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def sample_coalitions(plan: CoalitionPlan, num_inputs: int, generator: torch.Generator) -> torch.Tensor:
    r"""Draw the sampled part of a plan for each input, paired with complements.

    Args:
        plan ([`CoalitionPlan`]): from [`plan_coalitions`].
        num_inputs (`int`): number of explained inputs ``B``.
        generator (`torch.Generator`): a CPU generator; the result depends only on its state, `plan` and
            `num_inputs`.

    Returns:
        `torch.BoolTensor` of shape `(B, num_sampled, M)` on CPU: rows ``2j`` and ``2j + 1`` are a
        coalition and its complement (the last row is unpaired when ``num_sampled`` is odd).
    """
    m, n = plan.num_players, plan.num_sampled
    if n == 0:
        return torch.zeros(num_inputs, 0, m, dtype=torch.bool)
    num_draws = (n + 1) // 2
    size_index = torch.multinomial(
        plan.sample_size_probs.to(torch.float32).expand(num_inputs, -1),
        num_draws,
        replacement=True,
        generator=generator,
    )  # (B, D)
    sizes = plan.sample_sizes[size_index].reshape(-1, 1)  # (B * D, 1)
    # A uniform subset of size k: the k players with the smallest uniform keys.
    order = torch.rand(num_inputs * num_draws, m, generator=generator).argsort(dim=1)
    member = torch.arange(m).unsqueeze(0) < sizes  # (B * D, M): the first k positions of the order
    draws = torch.zeros(num_inputs * num_draws, m, dtype=torch.bool).scatter_(1, order, member)
    draws = draws.view(num_inputs, num_draws, 1, m)
    paired = torch.cat([draws, ~draws], dim=2).view(num_inputs, 2 * num_draws, m)
    return paired[:, :n]
