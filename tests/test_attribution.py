"""Known-answer tests for the Kernel SHAP attribution core (hf_explvec.attribution)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_explvec.attribution import (
    gaussian_blur,
    kernel_shap,
    make_baseline,
    make_generator,
    mask_patches,
    min_num_samples,
    patch_kernel_shap,
    plan_coalitions,
    sample_coalitions,
    solve_kernel_shap,
    to_patch_grid,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one intra-op thread, and steadily on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- references (brute force)


def exact_shapley_from_game(game, num_players: int) -> torch.Tensor:
    """Shapley values by the permutation-free formula over all 2**M coalitions.

    `game` maps a tuple of bools (length M) to a tensor of values (any shape); returns (M, *shape).
    """
    m = num_players
    values = {s: game(s) for s in itertools.product([False, True], repeat=m)}
    phi = []
    for i in range(m):
        total = 0.0
        for s, v in values.items():
            if s[i]:
                continue
            size = sum(s)
            with_i = s[:i] + (True,) + s[i + 1 :]
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            total = total + weight * (values[with_i] - v)
        phi.append(total)
    return torch.stack(phi)


def paint(image: torch.Tensor, keep: tuple[bool, ...], baseline: torch.Tensor, patch: int) -> torch.Tensor:
    """One image (C, H, W) with absent patches copied from baseline (C, H, W), by explicit loops."""
    out = image.clone()
    gw = image.shape[2] // patch
    for i, present in enumerate(keep):
        if not present:
            r, c = divmod(i, gw)
            out[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = baseline[
                :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch
            ]
    return out


def exact_patch_shapley(model, images, target, patch, baseline_images, value="logit") -> torch.Tensor:
    """(B, M) exact Shapley values of the patch game, float64: all 2**M painted images, one forward each."""
    m = (images.shape[2] // patch) * (images.shape[3] // patch)
    coalitions = list(itertools.product([False, True], repeat=m))
    out = []
    for b in range(images.shape[0]):
        painted = torch.stack([paint(images[b], keep, baseline_images[b], patch) for keep in coalitions])
        with torch.no_grad():
            scores = model(painted).double()
        if value == "log_prob":
            scores = scores.log_softmax(-1)
        elif value == "prob":
            scores = scores.softmax(-1)
        t = int(target[b]) if isinstance(target, torch.Tensor) else target
        table = dict(zip(coalitions, scores[:, t], strict=True))
        out.append(exact_shapley_from_game(table.__getitem__, m))
    return torch.stack(out)


# --------------------------------------------------------------------------- tiny models


def tiny_net(num_classes: int = 5, patch: int = 8) -> nn.Module:
    """A nonlinear net whose patches interact (MLP after a per-location conv)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=patch, stride=patch),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(36, 16),
        nn.Tanh(),
        nn.Linear(16, num_classes),
    )
    return net.eval()


class AdditiveNet(nn.Module):
    """score_c = sum over patches of g_c(patch): an additive game, Shapley = g(x_i) - g(b_i)."""

    def __init__(self, patch: int, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, kernel_size=patch, stride=patch)

    def forward(self, x):
        return torch.sin(self.conv(x)).sum(dim=(2, 3))


@pytest.fixture(scope="module")
def images_3x3():
    torch.manual_seed(42)
    return torch.randn(3, 3, 24, 24)  # patch 8 -> 3 x 3 grid, M = 9


@pytest.fixture(scope="module")
def exact_3x3(images_3x3):
    net = tiny_net()
    target = torch.tensor([0, 2, 4])
    ref = exact_patch_shapley(net, images_3x3, target, 8, torch.zeros_like(images_3x3))
    return net, target, ref


# --------------------------------------------------------------------------- known answers


def test_full_enumeration_is_exact_m4():
    torch.manual_seed(3)
    net = tiny_net(patch=8)
    images = torch.randn(2, 3, 32, 32)  # patch 16 -> M = 4
    ref = exact_patch_shapley(net, images, 1, 16, torch.zeros_like(images))
    phi = patch_kernel_shap(net, images, 1, patch_size=16, num_samples=16, seed=0)
    assert phi.shape == (2, 4) and phi.dtype == torch.float32
    torch.testing.assert_close(phi.double(), ref, atol=1e-5, rtol=1e-4)


def test_full_enumeration_is_exact_m9(exact_3x3, images_3x3):
    net, target, ref = exact_3x3
    phi = patch_kernel_shap(net, images_3x3, target, patch_size=8, num_samples=512, seed=0)
    torch.testing.assert_close(phi.double(), ref, atol=1e-5, rtol=1e-4)
    assert plan_coalitions(9, 510).is_exact


def test_estimates_converge_to_exact(exact_3x3, images_3x3):
    net, target, ref = exact_3x3
    repeats = 8  # each copy of an image gets its own coalitions: 8 independent estimates per image

    def rmse(n):
        phi = patch_kernel_shap(
            net, images_3x3.repeat(repeats, 1, 1, 1), target.repeat(repeats), patch_size=8, num_samples=n, seed=0
        )
        return (phi.double() - ref.repeat(repeats, 1)).pow(2).mean().sqrt().item()

    small, medium, large = rmse(20), rmse(100), rmse(400)
    scale = ref.pow(2).mean().sqrt().item()
    assert large < medium < small
    assert large < 0.1 * scale


def test_additive_model_is_exact_with_sampling():
    torch.manual_seed(5)
    net = AdditiveNet(patch=8).eval()
    images = torch.randn(2, 3, 32, 32)  # M = 16, 2**16 coalitions: far beyond the budget
    baseline = torch.randn(3, 1, 1)
    phi = patch_kernel_shap(net, images, 2, patch_size=8, num_samples=64, baseline=baseline, seed=0)
    with torch.no_grad():
        g_x = torch.sin(net.conv(images))[:, 2].flatten(1)  # (B, 16) row-major
        g_b = torch.sin(net.conv(baseline.expand_as(images)))[:, 2].flatten(1)
    torch.testing.assert_close(phi, g_x - g_b, atol=2e-5, rtol=1e-4)
    assert not plan_coalitions(16, 62).is_exact


@pytest.mark.parametrize("num_samples", [18, 64, 500])
@pytest.mark.parametrize("value", ["logit", "log_prob", "prob"])
def test_efficiency(images_3x3, num_samples, value):
    net = tiny_net()
    phi = patch_kernel_shap(net, images_3x3, 3, patch_size=8, num_samples=num_samples, seed=1, value=value)
    with torch.no_grad():
        full, empty = net(images_3x3), net(torch.zeros_like(images_3x3))
    if value == "log_prob":
        full, empty = full.log_softmax(-1), empty.log_softmax(-1)
    elif value == "prob":
        full, empty = full.softmax(-1), empty.softmax(-1)
    torch.testing.assert_close(phi.sum(1), full[:, 3] - empty[:, 3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("value", ["log_prob", "prob"])
def test_value_options_exact(exact_3x3, images_3x3, value):
    net, target, _ = exact_3x3
    ref = exact_patch_shapley(net, images_3x3[:1], target[:1], 8, torch.zeros_like(images_3x3[:1]), value=value)
    phi = patch_kernel_shap(net, images_3x3[:1], target[:1], patch_size=8, num_samples=512, value=value)
    torch.testing.assert_close(phi.double(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mean", "blur", "tensor", "float"])
def test_baseline_options_exact(images_3x3, kind):
    torch.manual_seed(9)
    net = tiny_net()
    images = images_3x3[:2]
    baseline = {"mean": "mean", "blur": "blur", "tensor": torch.randn(1, 3, 24, 24), "float": -0.5}[kind]
    base_images = {
        "mean": images.mean(dim=(2, 3), keepdim=True).expand_as(images),
        "blur": gaussian_blur(images, sigma=2.0),
        "tensor": baseline.expand_as(images) if kind == "tensor" else None,
        "float": torch.full_like(images, -0.5),
    }[kind]
    ref = exact_patch_shapley(net, images, 1, 8, base_images)
    phi = patch_kernel_shap(net, images, 1, patch_size=8, num_samples=600, baseline=baseline)
    torch.testing.assert_close(phi.double(), ref, atol=1e-5, rtol=1e-4)


def test_make_baseline_shapes():
    x = torch.randn(2, 3, 16, 16)
    assert make_baseline(x, 0.25, 8) == 0.25
    assert make_baseline(x, "mean", 8).shape == (2, 3, 1, 1)
    assert make_baseline(x, "blur", 8).shape == (2, 3, 16, 16)
    assert make_baseline(x, torch.zeros(3, 1, 1), 8).shape == (1, 3, 1, 1)
    flat = torch.ones(1, 1, 16, 16)
    torch.testing.assert_close(gaussian_blur(flat, 1.5), flat)  # a constant image is a fixed point


# --------------------------------------------------------------------------- the value-function seam


def test_kernel_shap_seam_on_a_synthetic_game():
    """Any coalition game; rows of several inputs share a call; (N, K) outputs give (B, K, M)."""
    m, bsz = 6, 3
    torch.manual_seed(11)
    weights = torch.randn(bsz, m)
    pair = torch.randn(bsz, m, m)
    seen_inputs_per_call = []

    def value_fn(coalitions, index):
        seen_inputs_per_call.append(index.unique().numel())
        z = coalitions.float()
        linear = (z * weights[index]).sum(1)
        quadratic = torch.einsum("ni,nij,nj->n", z, pair[index], z)
        return torch.stack([linear + quadratic, torch.tanh(quadratic)], dim=1)

    phi = kernel_shap(value_fn, m, bsz, num_samples=2**m, batch_size=20, seed=0)
    assert phi.shape == (bsz, 2, m)
    assert max(seen_inputs_per_call) > 1
    for b in range(bsz):

        def game(keep, b=b):
            z = torch.tensor(keep, dtype=torch.float64)
            quadratic = z @ pair[b].double() @ z
            return torch.stack([z @ weights[b].double() + quadratic, torch.tanh(quadratic)])

        ref = exact_shapley_from_game(game, m)  # (M, 2)
        torch.testing.assert_close(phi[b].double(), ref.T, atol=1e-5, rtol=1e-4)


def test_kernel_shap_single_player():
    phi = kernel_shap(lambda z, i: z.float().sum(1) * 3.0 + 1.0, 1, 2, num_samples=2)
    torch.testing.assert_close(phi, torch.full((2, 1), 3.0))


def test_sampler_pairs_and_kernel():
    plan = plan_coalitions(12, 300)
    draws = sample_coalitions(plan, 4, make_generator(0))
    assert draws.shape == (4, plan.num_sampled, 12)
    assert torch.equal(draws[:, 0::2][:, : draws.shape[1] // 2], ~draws[:, 1::2])
    sizes = draws.sum(-1)
    assert sizes.min() >= plan.sample_sizes.min() and sizes.max() <= plan.sample_sizes.max()
    assert plan.weights.sum().item() == pytest.approx(1.0)
    # size 1 / 11 pairs (24 coalitions) fit the budget and are enumerated, as shap's KernelExplainer does
    assert plan.enumerated.shape[0] == 24 and plan.enumerated.sum(1).tolist().count(1) == 12


def test_solver_rank_deficient_fallback_keeps_efficiency(caplog):
    """A repeated pair cannot determine 3 values: min-norm fallback, a warning, efficiency still exact."""
    z = torch.tensor([[True, False, False], [False, True, True]]).repeat(2, 1).unsqueeze(0)  # (1, 4, 3)
    values = torch.tensor([[0.3, 0.9, 0.3, 0.9]])
    with caplog.at_level("WARNING", logger="hf_explvec.attribution.solver"):
        phi = solve_kernel_shap(z, torch.ones(4), values, torch.tensor([0.1]), torch.tensor([1.5]))
    assert "rank deficient" in caplog.text
    torch.testing.assert_close(phi.sum(1), torch.tensor([1.4]))


def test_mask_patches_matches_painting_in_any_row_order():
    torch.manual_seed(4)
    images = torch.randn(3, 3, 16, 24)  # non-square: 2 x 3 grid of 8-pixel patches
    coalitions = torch.rand(40, 6) < 0.5
    runs, shuffled = torch.arange(3).repeat_interleave(14)[:40], torch.randint(0, 3, (40,))
    for base in (torch.randn(3, 3, 16, 24), torch.randn(1, 3, 1, 1), 0.0, -1.25):
        full = base.expand_as(images) if isinstance(base, torch.Tensor) else torch.full_like(images, base)
        for index in (runs, shuffled):
            out = mask_patches(images, coalitions, index, base, 8)
            ref = [paint(images[i], tuple(c.tolist()), full[i], 8) for c, i in zip(coalitions, index, strict=True)]
            torch.testing.assert_close(out, torch.stack(ref), rtol=0, atol=0)  # bit-exact painting


def test_many_patches_shape_and_efficiency():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 2, 4, 4), nn.Flatten(), nn.Tanh(), nn.Linear(2 * 49, 4)).eval()
    images = torch.randn(2, 3, 28, 28)  # patch 4 -> M = 49, the ViT-B/32 grid
    phi = patch_kernel_shap(net, images, torch.tensor([1, 3]), patch_size=4, num_samples=min_num_samples(49), seed=0)
    assert phi.shape == (2, 49) and to_patch_grid(phi).shape == (2, 7, 7)
    with torch.no_grad():
        delta = net(images)[[0, 1], [1, 3]] - net(torch.zeros_like(images))[[0, 1], [1, 3]]
    torch.testing.assert_close(phi.sum(1), delta, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- determinism and batching


def test_same_seed_same_values_different_seed_differs(images_3x3):
    net = tiny_net()
    state = torch.random.get_rng_state()
    a = patch_kernel_shap(net, images_3x3, 0, patch_size=8, num_samples=60, seed=123)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    b = patch_kernel_shap(net, images_3x3, 0, patch_size=8, num_samples=60, seed=123)
    c = patch_kernel_shap(net, images_3x3, 0, patch_size=8, num_samples=60, seed=124)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_batching_invariance(images_3x3, batch_size):
    net = tiny_net()
    ref = patch_kernel_shap(net, images_3x3, 0, patch_size=8, num_samples=60, seed=7, batch_size=32)
    phi = patch_kernel_shap(net, images_3x3, 0, patch_size=8, num_samples=60, seed=7, batch_size=batch_size)
    torch.testing.assert_close(phi, ref, atol=1e-5, rtol=1e-5)


def test_to_patch_grid():
    values = torch.arange(2 * 12.0).view(2, 12)
    assert to_patch_grid(values[:, :9]).shape == (2, 3, 3)
    grid = to_patch_grid(values, (3, 4))
    assert grid[1, 2, 3] == values[1, 11]  # row-major
    with pytest.raises(ValueError, match="square"):
        to_patch_grid(values)


def test_model_output_with_logits_attribute(images_3x3):
    net = tiny_net()

    class Output:
        def __init__(self, logits):
            self.logits = logits

    a = patch_kernel_shap(lambda x: Output(net(x)), images_3x3, 1, patch_size=8, num_samples=40, seed=0)
    b = patch_kernel_shap(net, images_3x3, 1, patch_size=8, num_samples=40, seed=0)
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- typed errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(patch_size=5), ValueError, "divisor of H=24"),
        (dict(patch_size=8.0), TypeError, "patch_size must be an int"),
        (dict(num_samples=17), ValueError, "need at least 18"),
        (dict(num_samples=100.0), TypeError, "num_samples must be an int"),
        (dict(target=5), ValueError, "num_classes=5"),
        (dict(target=-1), ValueError, ">= 0"),
        (dict(target=torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer dtype"),
        (dict(target=torch.tensor([0, 1])), ValueError, r"shape \(3,\)"),
        (dict(target="cat"), TypeError, "target must be"),
        (dict(value="softmax"), ValueError, "value must be one of"),
        (dict(baseline="zeros"), ValueError, "baseline must be"),
        (dict(baseline=[0.0]), TypeError, "baseline must be"),
        (dict(baseline=torch.zeros(2, 3, 1, 1)), ValueError, "does not broadcast"),
        (dict(baseline=float("nan")), ValueError, "finite"),
        (dict(baseline=torch.full((3, 1, 1), float("inf"))), ValueError, "finite"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
    ],
)
def test_bad_inputs_raise_typed_errors(images_3x3, kwargs, error, match):
    args = dict(target=0, patch_size=8, num_samples=40)
    args.update(kwargs)
    target = args.pop("target")
    with pytest.raises(error, match=match):
        patch_kernel_shap(tiny_net(), images_3x3, target, **args)


def test_bad_pixel_values():
    net = tiny_net()
    with pytest.raises(ValueError, match="4-D|3-D"):
        patch_kernel_shap(net, torch.randn(3, 24, 24), 0, patch_size=8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        patch_kernel_shap(net, [[0.0]], 0, patch_size=8)
    with pytest.raises(TypeError, match="floating point"):
        patch_kernel_shap(net, torch.zeros(1, 3, 24, 24, dtype=torch.uint8), 0, patch_size=8)


def test_bad_forward_and_value_fn_outputs(images_3x3):
    with pytest.raises(ValueError, match=r"logits of shape \(64, num_classes\)"):
        patch_kernel_shap(lambda x: x.sum(dim=(1, 2, 3)), images_3x3, 0, patch_size=8, num_samples=40)
    with pytest.raises(ValueError, match="value_fn must return shape"):
        kernel_shap(lambda z, i: torch.zeros(3), 4, 2, num_samples=8)
    with pytest.raises(TypeError, match="value_fn must return a torch.Tensor"):
        kernel_shap(lambda z, i: 0.0, 4, 2, num_samples=8)
    assert min_num_samples(49) == 98


@pytest.mark.parametrize(
    "value, minimum, error, message",
    [
        (2.0, 1, TypeError, "n must be an int, got float"),
        (True, 0, TypeError, "got bool"),
        (np.bool_(True), 0, TypeError, "got bool"),
        (0, 1, ValueError, "n must be >= 1, got 0"),
    ],
)
def test_check_int_refuses(value, minimum, error, message):
    from hf_explvec._validation import check_int

    with pytest.raises(error, match=message):
        check_int("n", value, minimum)


def test_check_int_accepts_numpy_integers():
    from hf_explvec._validation import check_int

    assert check_int("n", np.int64(3), 1) == 3 and type(check_int("n", np.int64(3), 1)) is int
