"""The FastSHAP / ViT-Shapley objective of the ablation lever (hf_explvec.demo.fastshap): coalitions, loss, the
teacher's game and the twins."""

import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.demo import quick_config
from hf_explvec.demo.fastshap import (
    _teacher_gains,
    coalition_loss,
    sample_shapley_coalitions,
    train_fastshap_twins,
)
from hf_explvec.testing import tiny_clip_model


@pytest.fixture(scope="module")
def model():
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=0), ["a", "b", "c"], class_embeddings=embeddings)


def test_coalitions_are_kernel_sized_pairs_with_their_complements_and_the_grand_coalition():
    coalitions = sample_shapley_coalitions(5, 16, 8, torch.Generator().manual_seed(0))
    assert coalitions.shape == (5, 9, 16) and coalitions.dtype == torch.bool
    pairs = coalitions[:, :8].reshape(5, 4, 2, 16)
    assert torch.equal(pairs[:, :, 0], ~pairs[:, :, 1])
    sizes = coalitions[:, :8].sum(-1)
    assert sizes.min() >= 1 and sizes.max() <= 15  # never empty or full: those are the game's fixed points
    assert coalitions[:, 8].all()
    again = sample_shapley_coalitions(5, 16, 8, torch.Generator().manual_seed(0))
    assert torch.equal(coalitions, again)
    # the kernel puts most mass on the smallest and largest coalitions
    many = sample_shapley_coalitions(400, 16, 2, torch.Generator().manual_seed(1))[:, 0].sum(-1)
    assert ((many <= 2) | (many >= 14)).float().mean() > 0.5
    for bad in (0, 3):
        with pytest.raises(ValueError, match="even number"):
            sample_shapley_coalitions(1, 16, bad, torch.Generator())


def test_coalition_loss_is_zero_for_the_exact_values_of_an_additive_game():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 16, generator=generator)
    coalitions = sample_shapley_coalitions(4, 16, 10, generator)
    gains = torch.einsum("bkm,bm->bk", coalitions.float(), values)  # v(S) - v(empty) of an additive game
    assert coalition_loss(values, coalitions, gains).item() == pytest.approx(0.0, abs=1e-10)
    assert coalition_loss(values + 0.1, coalitions, gains).item() > 1e-3


def test_the_teachers_grand_coalition_gain_is_its_logit_on_the_image_minus_on_the_baseline(model):
    model = model.eval()
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 1])
    coalitions = sample_shapley_coalitions(3, 16, 4, torch.Generator().manual_seed(3))
    gains = _teacher_gains(model, pixel_values, labels, coalitions)
    with torch.no_grad():
        full = model(pixel_values=pixel_values).logits[torch.arange(3), labels]
        empty = model(pixel_values=torch.zeros(1, 3, 32, 32)).logits[0, labels]
    assert gains.shape == (3, 5)
    torch.testing.assert_close(gains[:, -1], full - empty, rtol=1e-4, atol=1e-5)


def test_fastshap_twins_share_their_start_and_order_and_differ_by_the_objective(model, tmp_path):
    config = quick_config(str(tmp_path), num_train_epochs=2, batch_size=4)
    pixel_values = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(8) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prediction_only, explaining = train_fastshap_twins(model, model, pixel_values, labels, config, 0.5, 4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the start is not changed
    again, _ = train_fastshap_twins(model, model, pixel_values, labels, config, 0.5, 4)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in prediction_only.state_dict().items())
    moved = [k for k, v in explaining.state_dict().items() if not torch.equal(v, prediction_only.state_dict()[k])]
    assert moved and not explaining.training
    with pytest.raises(ValueError, match="alpha"):
        train_fastshap_twins(model, model, pixel_values, labels, config, 1.0)
