import copy
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision, TaskVector
from hf_explvec.arithmetic import vision_state
from hf_explvec.base_check import BaseModelMismatchError, base_fingerprint
from hf_explvec.training import (
    DatasetFormatError,
    EpochShuffleSampler,
    TrainingConfig,
    train,
    train_twins,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_tiny.py"
_spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate_state")


@pytest.fixture(scope="module")
def dataset():
    return tiny.build_dataset(32, seed=0)


def make_config(tmp_path, name="run", **overrides) -> TrainingConfig:
    settings = {
        "output_dir": tmp_path / name,
        "learning_rate": 3e-3,
        "per_device_batch_size": 8,
        "max_steps": 4,
        "log_every": 1,
        "disable_tqdm": True,
    }
    return TrainingConfig(**{**settings, **overrides})


def parameters(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_same_parameters(a, b):
    a, b = parameters(a) if not isinstance(a, dict) else a, parameters(b) if not isinstance(b, dict) else b
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ------------------------------------------------------------------------------------------------ the basics
def test_loss_decreases_parts_logged_schedule_and_saved_model(tmp_path):
    dataset = tiny.build_dataset(8, seed=0)  # one batch: the tiny model learns it in a few dozen steps
    model = tiny.build_model()
    head = model.class_embeddings.clone(), model.logit_scale.clone()
    config = make_config(tmp_path, learning_rate=1e-3, max_steps=40, warmup_steps=3, eval_every=20, alpha=0.8)
    result = train(model, dataset, config, eval_dataset=dataset)

    logs = [h for h in result.history if "loss" in h]
    evals = [h for h in result.history if "eval_loss" in h]
    assert [h["step"] for h in logs] == list(range(1, 41)) and [h["step"] for h in evals] == [20, 40]
    for h in logs:
        assert {"loss", "ce_loss", "attribution_loss", "lr", "epoch"} <= h.keys()
        assert h["loss"] == pytest.approx(0.8 * h["ce_loss"] + 0.2 * h["attribution_loss"], rel=1e-5)
    first, last = sum(h["loss"] for h in logs[:4]) / 4, sum(h["loss"] for h in logs[-4:]) / 4
    assert last < 0.5 * first
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] and evals[-1]["eval_accuracy"] > 0.5
    assert evals[-1]["eval_e_rmse"] > 0
    # Warmup (the learning rate each step used): 0, 1/3, 2/3 of the peak, then a cosine decay to near zero.
    lrs = [h["lr"] for h in logs]
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3])
    assert all(a > b for a, b in itertools.pairwise(lrs[3:])) and lrs[-1] < 1e-5
    assert result.global_step == 40 and logs[-1]["epoch"] == 40.0  # one batch per epoch

    assert torch.equal(model.class_embeddings, head[0]) and torch.equal(model.logit_scale, head[1])
    assert result.model is model and not model.training and model.config.alpha == 0.8
    reloaded = SelfExplainingCLIPVision.from_pretrained(config.output_dir)
    assert_same_parameters(reloaded, model)
    assert reloaded.config.alpha == 0.8
    assert json.loads((config.output_dir / "history.json").read_text()) == result.history
    assert json.loads((config.output_dir / "training_config.json").read_text())["alpha"] == 0.8


def test_head_stays_frozen_and_weight_decay_skips_vectors(tmp_path, dataset):
    model = tiny.build_model()
    before = {k: v.clone() for k, v in model.named_buffers()}
    train(model, dataset, make_config(tmp_path, learning_rate=0.05, weight_decay=0.5, max_steps=3))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name  # class_embeddings, logit_scale, position_ids: bit-identical

    from hf_explvec.training.loop import _parameter_groups

    decay, no_decay = _parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 or "patch_embedding" in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "vision_model.embeddings.class_embedding",
        "vision_model.post_layernorm.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.bias",
    }


def test_prediction_only_and_self_explaining_differ(tmp_path, dataset):
    prediction_only = train(tiny.build_model(), dataset, make_config(tmp_path, "a1", alpha=1.0))
    self_explaining = train(tiny.build_model(), dataset, make_config(tmp_path, "a08", alpha=0.8))
    assert prediction_only.model.config.alpha == 1.0 and self_explaining.model.config.alpha == 0.8
    for h in prediction_only.history:
        assert h["loss"] == h["ce_loss"] and "attribution_loss" in h  # logged, not trained
    a, b = parameters(prediction_only.model), parameters(self_explaining.model)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # The same first batch and starting weights: the same losses at step 1, then the runs part.
    assert prediction_only.history[0]["ce_loss"] == self_explaining.history[0]["ce_loss"]

    # alpha = 1 trains on labelled data without SHAP values too.
    plain = train(tiny.build_model(), dataset.remove_columns("shap_values"), make_config(tmp_path, "plain", alpha=1.0))
    assert "attribution_loss" not in plain.history[0] and plain.global_step == 4


def test_torch_datasets_and_transformed_datasets_train(tmp_path, dataset):
    rows = [dict(row) for row in dataset.with_format("torch").select(range(8))]  # a list of dicts is a torch Dataset
    assert train(tiny.build_model(), rows, make_config(tmp_path, "rows", max_steps=2)).global_step == 2

    def to_tensors(batch):  # an on-the-fly transform (set_transform) is kept, not replaced by with_format
        return {
            k: [torch.tensor(v, dtype=torch.float32 if k != "labels" else torch.long) for v in batch[k]] for k in batch
        }

    transformed = dataset.with_transform(to_tensors)
    assert train(tiny.build_model(), transformed, make_config(tmp_path, "tf", max_steps=2)).global_step == 2


def test_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(EpochShuffleSampler(10, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and list(EpochShuffleSampler(10, seed=4)) != first


# ----------------------------------------------------------------------------------------------------- resume
class KilledAfter(torch.utils.data.Dataset):
    """Raises once `budget` examples were read: a run killed in the middle of training."""

    def __init__(self, data, budget: int):
        self.data, self.budget = data.with_format("torch"), budget

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.budget -= 1
        if self.budget < 0:
            raise RuntimeError("killed")
        return self.data[int(index)]


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, dataset):
    # 32 examples, batch 4, accumulation 2: 8 batches and 4 optimizer steps per epoch; 10 steps span 3 epochs.
    settings = {"max_steps": 10, "per_device_batch_size": 4, "gradient_accumulation_steps": 2, "checkpoint_every": 2}
    straight = train(tiny.build_model(), dataset, make_config(tmp_path, "straight", **settings))

    killed_config = make_config(tmp_path, "killed", **settings)
    # train reads example 0, then every example once to check them (1 + 32 reads), then dies during step 8 (8 reads
    # a step): after checkpoint 6 was written.
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny.build_model(), KilledAfter(dataset, budget=1 + 32 + 60), killed_config)
    checkpoints = sorted(p.name for p in (killed_config.output_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002", "step_00000004", "step_00000006"]
    # A fresh process would build the same starting model; the checkpoint overwrites its weights anyway.
    resumed = train(tiny.build_model(), dataset, make_config(tmp_path, "killed", resume_from="latest", **settings))
    assert resumed.global_step == 10
    assert_same_parameters(resumed.model, straight.model)  # exactly (CPU, float32)
    assert resumed.history == straight.history

    # From an epoch boundary (step 4 ends epoch 1), into a new folder.
    boundary = tmp_path / "straight" / "checkpoints" / "step_00000004"
    again = train(tiny.build_model(), dataset, make_config(tmp_path, "again", resume_from=boundary, **settings))
    assert_same_parameters(again.model, straight.model)


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path, dataset):
    train(tiny.build_model(), dataset, make_config(tmp_path, max_steps=2, checkpoint_every=2))
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    model = tiny.build_model()
    initial = parameters(model)
    with pytest.raises(ValueError, match="per_device_batch_size: checkpoint 8 vs this run 4"):
        train(model, dataset, make_config(tmp_path, "other", per_device_batch_size=4, resume_from=checkpoint))
    with pytest.raises(ValueError, match="alpha: checkpoint 0.8 vs this run 1.0"):
        train(model, dataset, make_config(tmp_path, "other", alpha=1.0, resume_from=checkpoint))
    assert model.config.alpha == 1.0 and not model.training  # untouched (from_clip builds it in eval mode)
    assert_same_parameters(model, initial)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        train(model, dataset, make_config(tmp_path, "other", resume_from=tmp_path / "nowhere"))
    # "latest" with no checkpoint yet starts from scratch.
    assert train(model, dataset, make_config(tmp_path, "fresh", max_steps=1, resume_from="latest")).global_step == 1


# ------------------------------------------------------------------------------ accumulation, precision, DDP
def test_gradient_accumulation_matches_the_larger_batch(tmp_path, dataset):
    start = tiny.build_model()
    big = train(copy.deepcopy(start), dataset, make_config(tmp_path, "big", max_steps=1, per_device_batch_size=8))
    accumulated = train(
        copy.deepcopy(start),
        dataset,
        make_config(tmp_path, "acc", max_steps=1, per_device_batch_size=4, gradient_accumulation_steps=2),
    )
    a, b, initial = parameters(big.model), parameters(accumulated.model), parameters(start)
    assert all(not torch.equal(a[k], initial[k]) for k in a)  # every tensor moved by about the learning rate
    # Attention is invariant to the key bias, so its true gradient is 0 and what Adam sees is rounding noise,
    # normalised to a step of up to the learning rate: those two tensors are left out.
    compared = [k for k in a if not k.endswith("k_proj.bias")]
    assert len(compared) == len(a) - 2
    for key in compared:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)  # 1/300 of the step
    assert accumulated.history[0]["loss"] == pytest.approx(big.history[0]["loss"], rel=1e-6)


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, dataset):
    model = tiny.build_model()
    initial = parameters(model)
    result = train(model, dataset, make_config(tmp_path, max_steps=2, mixed_precision="bf16"))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert any(not torch.equal(p, initial[k]) for k, p in model.named_parameters())
    # Accelerate's autocast wrapper is removed from the returned model.
    assert model.forward.__func__ is SelfExplainingCLIPVision.forward and "_original_forward" not in vars(model)
    assert model(torch.rand(1, 3, 32, 32)).logits.dtype == torch.float32


def test_two_processes_with_accelerate_launch(tmp_path, dataset):
    """`accelerate launch` with 2 CPU processes (gloo) equals 1 process accumulating the same 2 batches."""
    output_dir = tmp_path / "ddp"
    args = ["--output_dir", str(output_dir), "--max_steps", "4", "--num_examples", "32", "--per_device_batch_size", "4"]
    # `--cpu` alone would start a single process: on CPU, Accelerate runs several through torchrun with this flag.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), *args]
    completed = subprocess.run(launch, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["num_processes"] == 2 and info["global_step"] == 4

    trained = SelfExplainingCLIPVision.from_pretrained(output_dir)
    initial = tiny.build_model()
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters(), strict=True))
    single = train(
        initial,
        tiny.build_dataset(32, seed=0),
        make_config(tmp_path, "single", max_steps=4, per_device_batch_size=4, gradient_accumulation_steps=2),
    )
    for ddp_entry, single_entry in zip(info["history"], single.history, strict=True):
        assert ddp_entry["loss"] == pytest.approx(single_entry["loss"], rel=1e-5)
        assert ddp_entry["lr"] == pytest.approx(single_entry["lr"])
    for (name, a), b in zip(trained.named_parameters(), single.model.parameters(), strict=True):
        if not name.endswith("k_proj.bias"):  # zero true gradient: Adam steps on rounding noise (see above)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


# --------------------------------------------------------------------------------------------------- bad input
def torch_rows(num_patches=16, pixels=(3, 32, 32)):
    return [
        {"pixel_values": torch.rand(*pixels), "labels": i % 4, "shap_values": torch.rand(num_patches)} for i in range(4)
    ]


@pytest.mark.parametrize(
    "make_data, error, message",
    [
        (lambda d: d.remove_columns("shap_values"), DatasetFormatError, r"missing column\(s\) \['shap_values'\]"),
        (lambda d: d.remove_columns("pixel_values"), DatasetFormatError, r"missing column\(s\) \['pixel_values'\]"),
        (lambda d: d.rename_column("labels", "label"), DatasetFormatError, r"missing column\(s\) \['labels'\]"),
        (
            lambda d: datasets.Dataset.from_dict({**d[:4], "shap_values": [[0.0] * 9] * 4}),
            DatasetFormatError,
            "'shap_values' must hold 16 values .*got 9",
        ),
        (lambda d: torch_rows(num_patches=49), DatasetFormatError, "'shap_values' must hold 16 values .*got 49"),
        (lambda d: torch_rows(pixels=(3, 64, 64)), DatasetFormatError, r"shape \(3, 32, 32\).*\(3, 64, 64\)"),
        (lambda d: [{"pixel_values": torch.rand(3, 32, 32)}], DatasetFormatError, r"lack key\(s\) \['labels'"),
        (lambda d: d.select([]), DatasetFormatError, "empty"),
        (lambda d: d.to_iterable_dataset(), TypeError, "map-style"),
    ],
)
def test_bad_data_raise_typed_errors_naming_the_problem(tmp_path, dataset, make_data, error, message):
    model = tiny.build_model()
    initial = parameters(model)
    with pytest.raises(error, match=message):
        train(model, make_data(dataset), make_config(tmp_path, alpha=0.5))
    assert model.config.alpha == 1.0  # nothing was changed
    assert_same_parameters(model, initial)


def test_out_of_range_labels_are_named(tmp_path, dataset):
    bad = dataset.cast_column("labels", datasets.Value("int64")).map(lambda row: {"labels": 7})
    message = r"column 'labels', row 0: label 7 is out of range: expected \[0, 4\) .*\(32 rows in all\)"
    with pytest.raises(DatasetFormatError, match=message):
        train(tiny.build_model(), bad, make_config(tmp_path))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\].*1.5"),
        ({"alpha": -0.1}, "alpha"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be an int >= 1"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"learning_rate": float("nan")}, "learning_rate"),
    ],
)
def test_bad_config_values(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_bad_model_or_config_types(tmp_path, dataset):
    with pytest.raises(TypeError, match="SelfExplainingCLIPVision"):
        train(torch.nn.Linear(2, 2), dataset, make_config(tmp_path))
    with pytest.raises(TypeError, match="TrainingConfig"):
        train(tiny.build_model(), dataset, {"output_dir": tmp_path})


# ------------------------------------------------------------------------------------------------------- twins
def test_train_twins_gives_the_explainability_vector(tmp_path, dataset):
    base = tiny.build_model()
    initial = parameters(base)
    prediction_only, self_explaining, vector = train_twins(
        base, dataset, make_config(tmp_path, "twins", max_steps=3), base_model_revision="0123abc"
    )
    assert_same_parameters(base, initial)  # trained on copies
    assert prediction_only.config.alpha == 1.0 and self_explaining.config.alpha == 0.8
    assert vector.config.alpha == 0.8 and vector.config.source_dataset == "toy-columns"
    assert vector.config.base_model == "hf_explvec.testing.tiny_clip_model"
    assert vector.config.base_model_revision == "0123abc"
    assert vector.norm() > 0
    # The base check refers to the twins' starting point (not the prediction-only twin), saved with the vector.
    assert vector.config.base_fingerprint == base_fingerprint(vision_state(base.state_dict()))
    assert vector.config.base_fingerprint != base_fingerprint(vision_state(prediction_only.state_dict()))
    saved = TaskVector.from_pretrained(tmp_path / "twins" / "explainability_vector")
    assert saved.config.base_fingerprint == vector.config.base_fingerprint
    with pytest.raises(BaseModelMismatchError, match="hf_explvec.testing.tiny_clip_model"):
        vector.apply_to(tiny.build_model(seed=1), lam=1.0)

    edited = vector.apply_to(copy.deepcopy(prediction_only), lam=1.0)
    for (name, a), b in zip(edited.named_parameters(), self_explaining.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # Same starting weights and data order: the first step sees the same batch with the same weights.
    histories = [
        json.loads((tmp_path / "twins" / n / "history.json").read_text())
        for n in ("prediction_only", "self_explaining")
    ]
    assert histories[0][0]["ce_loss"] == histories[1][0]["ce_loss"]
    assert (tmp_path / "twins" / "explainability_vector" / "config.json").is_file()

    with pytest.raises(ValueError, match="alpha < 1"):
        train_twins(base, dataset, make_config(tmp_path, "twins", alpha=1.0))
    with pytest.raises(TypeError, match="base_model_revision must be a string"):
        train_twins(base, dataset, make_config(tmp_path, "twins2"), base_model_revision=123)


# -------------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_one_step_on_the_real_vit_b32_architecture(tmp_path):
    from transformers import CLIPVisionConfig

    from hf_explvec import SelfExplainingCLIPVisionConfig

    config = SelfExplainingCLIPVisionConfig(
        vision_config=CLIPVisionConfig().to_dict(), projection_dim=512, class_names=["cat", "dog", "bird"]
    )
    torch.manual_seed(0)
    model = SelfExplainingCLIPVision(config)
    assert model.num_patches == 49
    data = datasets.Dataset.from_dict(
        {
            "pixel_values": torch.randn(2, 3, 224, 224).numpy(),
            "labels": [0, 2],
            "shap_values": torch.randn(2, 49).numpy(),
        }
    )
    initial = model.vision_model.encoder.layers[0].mlp.fc1.weight.detach().clone()
    head = model.class_embeddings.clone()
    result = train(
        model, data, TrainingConfig(tmp_path, max_steps=1, per_device_batch_size=2, log_every=1, disable_tqdm=True)
    )
    assert result.global_step == 1 and {"loss", "ce_loss", "attribution_loss"} <= result.history[0].keys()
    assert not torch.equal(model.vision_model.encoder.layers[0].mlp.fc1.weight, initial)
    assert torch.equal(model.class_embeddings, head)
