"""The ablation rows (hf_explvec.demo.ablations): quick run, partial vector, efficiency correction, bad names."""

import copy
import json
import math

import pytest
import torch

from hf_explvec import TaskVector
from hf_explvec.demo.ablations import (
    DEFAULT_VARIANTS,
    VARIANTS,
    VECTOR_PARTS,
    ablation_report,
    efficiency_correction,
    partial_vector,
    related_targets,
    run_ablations,
    score_gap,
    vector_halves,
    vector_part_keys,
)
from hf_explvec.demo.clip import tiny_clip_model, tiny_clip_tokenizer
from hf_explvec.demo.config import quick_config
from hf_explvec.evaluation import kernel_shap_values
from hf_explvec.modeling import SelfExplainingCLIPVision

DOMAINS = {"base": "pretraining", "source": "diverse_source", "targets": ("letters_on_photos", "photo_scenes")}


def _config(tmp_path, **overrides):
    return quick_config(str(tmp_path), show_progress=False, **{**DOMAINS, **overrides})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_ablations(_config(tmp_path_factory.mktemp("ablations")))


def test_quick_run_has_every_row_with_finite_figures(quick_run):
    targets = list(quick_run["targets"])
    assert targets == ["letters_on_photos"]  # the related target only, by default
    assert [(row["variant"], row["target"]) for row in quick_run["rows"]] == [
        (name, target) for target in targets for name in ("reference", *DEFAULT_VARIANTS)
    ]
    lambdas = quick_run["config"]["lambdas"]
    for row in quick_run["rows"]:
        assert row["chosen_lam"] in lambdas
        for key in ("relative_e_rmse", "relative_e_rmse_l2", "accuracy_change_points"):
            assert math.isfinite(row[key]), (row["variant"], key)
        for key in ("pointing", "deletion_auc", "insertion_auc"):
            assert all(math.isfinite(value) for value in row[key]), (row["variant"], key)
        assert isinstance(row["verdict"]["works"], bool)
        if row["variant"] == "lam_per_half":  # the square of the grid, indexed; (0, 0) first
            assert len(row["validation"]) == len(lambdas) ** 2 and row["validation"][0]["lams"] == [0.0, 0.0]
            assert all(lam in lambdas for lam in row["chosen_lams"])
            assert row["chosen_label"] == "({:g}, {:g})".format(*row["chosen_lams"])
        else:
            assert [entry["lam"] for entry in row["validation"]] == list(lambdas)
        if row["variant"] not in ("efficiency", "patch_norm"):
            assert row["relative_at_zero"] == {"e_rmse": 0.0, "e_rmse_l2": 0.0}  # λ2 = 0 is θ_T itself
        else:  # the correction / normalisation moves θ_T's attributions, not its predictions or rankings
            assert VARIANTS[row["variant"]].changes_target_attributions
            assert row["relative_at_zero"]["e_rmse"] != 0.0
            baseline = quick_run["targets"][row["target"]]["baseline_test"]
            for measure in ("pointing", "deletion_auc", "insertion_auc"):
                assert row[measure][0] == pytest.approx(baseline[measure], abs=1e-9), (row["variant"], measure)
            assert row["test_at_zero"]["accuracy"] == baseline["accuracy"]
            if row["variant"] == "patch_norm":  # a positive factor per image: the L2-normalised E-RMSE cannot move
                assert row["relative_at_zero"]["e_rmse_l2"] == pytest.approx(0.0, abs=1e-5)
        expected = ["patches"] * 2 if row["variant"] == "patch_norm" else ["cls"] * 2
        assert row["patch_normalisation"] == expected, row["variant"]
    reference = quick_run["rows"][0]
    assert reference["relative_e_rmse"] == pytest.approx(
        reference["test_at_chosen"]["e_rmse"] / quick_run["targets"]["letters_on_photos"]["baseline_test"]["e_rmse"] - 1
    )
    # retrained sources are other vectors; the α variants reuse the reference's labels and prediction-only twin
    sources = quick_run["sources"]
    assert sources["alpha_0.5"]["alpha"] == 0.5 and sources["data_x2"]["train_size"] == 2 * sources["reference"][
        "train_size"]  # fmt: skip
    assert sources["alpha_0.5"]["cosine_with_reference"] < 1 - 1e-6
    assert sources["merge_sources"]["cosine_with_reference"] < 1 - 1e-6  # another source domain's vector
    # patch_norm: twins trained with "patches" (another vector from the same labels), the others with "cls"
    assert {name: source["patch_normalisation"] for name, source in sources.items()} == {
        name: "patches" if name == "patch_norm" else "cls" for name in sources
    }
    assert sources["patch_norm"]["cosine_with_reference"] < 1 - 1e-6
    json.dumps(quick_run)  # JSON-ready
    report = ablation_report(quick_run)
    table = [line for line in report.splitlines() if line.startswith("| ") and "letters_on_photos" in line]
    assert len(table) == len(quick_run["rows"])
    for name in DEFAULT_VARIANTS:
        assert f"**{name}** helped" in report or f"**{name}** did not help" in report


def test_role_detection_is_tolerant(tmp_path):
    assert related_targets(_config(tmp_path)) == ("letters_on_photos",)
    assert related_targets(_config(tmp_path, targets=("photo_scenes",))) == ("photo_scenes",)  # none related


def _vector_and_model():
    base = tiny_clip_model(0)
    finetuned = copy.deepcopy(base)
    with torch.no_grad():
        for parameter in finetuned.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return TaskVector.from_models(base, finetuned), base


def test_vector_halves_split_the_vector_into_two_disjoint_parts_that_sum_to_it():
    vector, _ = _vector_and_model()
    first, second = vector_halves(vector)
    full, a, b = vector.state_dict(), first.state_dict(), second.state_dict()
    for key in vector.keys():
        assert torch.equal(a[key] + b[key], full[key]) and (not a[key].any() or not b[key].any()), key
    assert a["vision_model.embeddings.patch_embedding.weight"].any() and b["visual_projection.weight"].any()
    assert (
        a["vision_model.encoder.layers.0.mlp.fc1.weight"].any()
        and b["vision_model.encoder.layers.1.mlp.fc1.weight"].any()
    )


@pytest.mark.parametrize("part", list(VECTOR_PARTS))
def test_partial_vector_touches_only_the_selected_keys(part):
    vector, base = _vector_and_model()
    partial = partial_vector(vector, part)
    selected = set(vector_part_keys(vector.keys(), part))
    assert partial.keys() == vector.keys() and 0 < len(selected) < len(vector)
    full, kept = vector.state_dict(), partial.state_dict()
    for key in vector.keys():
        assert torch.equal(kept[key], full[key] if key in selected else torch.zeros_like(full[key])), key
    before = TaskVector.from_models(base, base).state_dict()  # canonical names of the model's values
    applied = partial.apply_to(copy.deepcopy(base), lam=0.5, check_base=False)
    moved = TaskVector.from_models(base, applied).state_dict()
    for key in vector.keys():
        expected = 0.5 * full[key] if key in selected else torch.zeros_like(before[key])
        torch.testing.assert_close(moved[key], expected, rtol=0, atol=1e-6)
        if key not in selected:
            assert torch.equal(moved[key], torch.zeros_like(moved[key])), key


def test_vector_parts_select_what_they_say():
    vector, _ = _vector_and_model()
    last = vector_part_keys(vector.keys(), "last")
    assert "visual_projection.weight" in last and all("layers.0." not in key for key in last)
    assert any(key.startswith("vision_model.post_layernorm.") for key in last)
    first = vector_part_keys(vector.keys(), "first")
    assert any(key.startswith("vision_model.embeddings.") for key in first)
    assert "visual_projection.weight" not in first
    assert all(key.startswith("vision_model.encoder.layers.") for key in vector_part_keys(vector.keys(), "encoder"))
    with pytest.raises(ValueError, match="unknown vector part 'middle'.*encoder"):
        partial_vector(vector, "middle")


def test_efficiency_correction_sums_to_the_gap_and_is_a_no_op_when_it_does():
    generator = torch.Generator().manual_seed(0)
    attributions, gap = torch.randn(5, 16, generator=generator), torch.randn(5, generator=generator)
    corrected = efficiency_correction(attributions, gap)
    torch.testing.assert_close(corrected.sum(dim=1), gap, rtol=0, atol=1e-5)
    assert not torch.allclose(corrected, attributions)
    torch.testing.assert_close(efficiency_correction(corrected, gap), corrected, rtol=0, atol=1e-6)
    # ranks unchanged: the shift is the same for every patch of an image
    assert torch.equal(corrected.argsort(dim=1), attributions.argsort(dim=1))
    with pytest.raises(ValueError, match="attributions must be"):
        efficiency_correction(attributions, gap[:3])


def test_score_gap_is_what_kernel_shap_values_sum_to():
    clip = tiny_clip_model(0)
    model = SelfExplainingCLIPVision.from_clip(clip, ["a", "b", "c"], tokenizer=tiny_clip_tokenizer()).eval()
    size = model.config.vision_config.image_size
    pixel_values, labels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1)), torch.tensor(
        [0, 2, 1])  # fmt: skip

    class Split:
        def __len__(self):
            return 3

    split = Split()
    split.pixel_values, split.labels = pixel_values, labels
    for value in ("logit", "prob"):
        gap = score_gap(model, pixel_values, labels, value=value)
        reference, _ = kernel_shap_values(model, split, 64, seed=0, value=value)
        torch.testing.assert_close(reference.sum(dim=1), gap, rtol=1e-4, atol=1e-4)
        corrected = efficiency_correction(torch.zeros_like(reference), gap)
        torch.testing.assert_close(corrected.sum(dim=1), gap, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="value must be"):
        score_gap(model, pixel_values, labels, value="margin")


def test_bad_variant_names_are_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown ablation variant\(s\) \['alpha_2'\].*alpha_0\.5.*efficiency"):
        run_ablations(_config(tmp_path), ("efficiency", "alpha_2"))
    with pytest.raises(TypeError, match="variants must be a tuple or list"):
        run_ablations(_config(tmp_path), "efficiency")
    with pytest.raises(TypeError, match="config must be a DemoConfig"):
        run_ablations({"source": "diverse_source"})
    assert set(DEFAULT_VARIANTS) == set(VARIANTS)


def test_script_writes_results_and_report(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "ablations.py"
    spec = importlib.util.spec_from_file_location("ablations_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--quick", "--output-dir", str(tmp_path), "--variants", "efficiency", "--base", "base", "--source",
            "diverse_source", "--targets", "letters_on_photos", "--hidden-size", "48",
            "--num-hidden-layers", "3"]  # fmt: skip
    results = script.main(argv)
    first = capsys.readouterr().out.splitlines()[0]
    assert "command: python scripts/ablations.py --quick" in first and "UTC" in first
    assert results["config"]["hidden_size"] == 48 and "small CLIP hidden 48, MLP 64, 3 layers" in first
    assert [row["variant"] for row in results["rows"]] == ["reference", "efficiency"]
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["variant"] == "efficiency"
    assert "| efficiency | letters_on_photos |" in (tmp_path / "ablations.md").read_text()
    with pytest.raises(SystemExit):
        script.main(["--variants"])
