"""Issue 9, groups 1 and 3 for training: bad data, settings, folders and faults during a run.

Every case asserts the error type, a message naming the problem, and that nothing changed: the model's state dict
bit for bit (and its `config.alpha`, training mode and `forward`), the data set's values, and the files (by sha256;
a folder that did not exist still does not exist)."""

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import datasets
import pytest
import torch
from conftest import reset_accelerate_state

import hf_explvec._process
from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.training import DatasetFormatError, TrainingConfig, train, train_twins

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "scripts" / "train_tiny.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate_state")


def make_config(output_dir, **overrides) -> TrainingConfig:
    settings = {
        "output_dir": output_dir,
        "learning_rate": 3e-3,
        "per_device_batch_size": 8,
        "max_steps": 2,
        "log_every": 1,
        "disable_tqdm": True,
        "alpha": 0.8,
    }
    return TrainingConfig(**{**settings, **overrides})


# ------------------------------------------------------------------------------------------------ snapshots
def model_snapshot(model) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "alpha": model.config.alpha,
        "training": model.training,
    }


def assert_model_unchanged(model, snapshot):
    state = model.state_dict()
    assert state.keys() == snapshot["state"].keys()
    changed = [k for k, v in state.items() if not torch.equal(v, snapshot["state"][k])]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"
    assert model.config.alpha == snapshot["alpha"]
    assert model.training == snapshot["training"]
    assert model.forward.__func__ is SelfExplainingCLIPVision.forward  # no autocast wrapper left behind
    assert all(p.grad is None for p in model.parameters())


def tree_snapshot(path: Path) -> dict | None:
    """sha256 of every file under `path` (or of `path` itself); `None` when nothing is there."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        os.fspath(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in path.rglob("*")
        if p.is_file()
    } | {os.fspath(p.relative_to(path)) + "/": "" for p in path.rglob("*") if p.is_dir()}


def data_snapshot(data):
    if isinstance(data, datasets.Dataset):
        return ("arrow", data._fingerprint, dict(data.format), data.data.table.to_pydict())
    return ("rows", [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in row.items()} for row in data])


def assert_data_unchanged(data, snapshot):
    now = data_snapshot(data)
    assert now[0] == snapshot[0]
    if now[0] == "arrow":
        assert now[1:3] == snapshot[1:3]
        assert json.dumps(now[3], default=str) == json.dumps(snapshot[3], default=str)  # NaN written the same
        return
    for row, old in zip(now[1], snapshot[1], strict=True):
        assert row.keys() == old.keys()
        for key, value in row.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, old[key], rtol=0, atol=0, equal_nan=True)
            else:
                assert value == old[key]


# ------------------------------------------------------------------------------------------------- bad data
def arrow_data(n=32):
    return tiny.build_dataset(n, seed=0)


def with_value(data: datasets.Dataset, column: str, row: int, value: float) -> datasets.Dataset:
    """A copy of `data` with one value of `column` at `row` replaced (the first pixel, or the first SHAP value)."""
    table = data.with_format("torch")[:]
    table[column] = table[column].clone()
    table[column][row].view(-1)[0] = value
    columns = {k: (v.numpy() if k != "labels" else v.tolist()) for k, v in table.items()}
    return datasets.Dataset.from_dict(columns, features=data.features, info=data.info)


def rows(n=8, num_patches=16):
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "pixel_values": torch.rand(3, 32, 32, generator=generator),
            "labels": i % 4,
            "shap_values": torch.rand(num_patches, generator=generator),
        }
        for i in range(n)
    ]


def rows_with(row: int, key: str, value):
    data = rows()
    if isinstance(value, float) and key != "labels":
        data[row][key].view(-1)[3] = value
    else:
        data[row][key] = value
    return data


def transformed_with_nan(row: int) -> datasets.Dataset:
    """A data set with a transform of its own (read example by example), NaN in the pixels of `row`."""
    data = with_value(arrow_data(16), "pixel_values", row, float("nan"))
    data.set_transform(lambda batch: {k: torch.as_tensor(v) for k, v in batch.items()})
    return data


BAD_DATA = [
    # (id, build train data, build eval data, alpha, message)
    (
        "nan-shap-arrow",
        lambda: with_value(arrow_data(), "shap_values", 5, float("nan")),
        None,
        0.8,
        r"train_dataset: 'shap_values' of row 5 holds a non-finite value \(nan",
    ),
    (
        "inf-shap-arrow-last-row",
        lambda: with_value(arrow_data(), "shap_values", 31, float("inf")),
        None,
        0.8,
        r"'shap_values' of row 31 holds a non-finite value \(inf",
    ),
    (
        "minus-inf-shap-arrow",
        lambda: with_value(arrow_data(), "shap_values", 0, float("-inf")),
        None,
        0.8,
        r"'shap_values' of row 0 holds a non-finite value \(-inf",
    ),
    (
        "nan-shap-with-alpha-1",
        lambda: with_value(arrow_data(), "shap_values", 7, float("nan")),
        None,
        1.0,
        r"'shap_values' of row 7 holds a non-finite value",
    ),
    (
        "nan-pixel-arrow",
        lambda: with_value(arrow_data(), "pixel_values", 3, float("nan")),
        None,
        0.8,
        r"'pixel_values' of row 3 holds a non-finite value \(nan at flat position 0\)",
    ),
    (
        "nan-shap-torch-rows",
        lambda: rows_with(2, "shap_values", float("nan")),
        None,
        0.8,
        r"'shap_values' of row 2 holds a non-finite value \(nan at flat position 3\)",
    ),
    (
        "inf-pixel-torch-rows",
        lambda: rows_with(6, "pixel_values", float("inf")),
        None,
        0.8,
        r"'pixel_values' of row 6 holds a non-finite value \(inf",
    ),
    (
        "nan-pixel-own-transform",
        lambda: transformed_with_nan(4),
        None,
        0.8,
        r"'pixel_values' of row 4 holds a non-finite value",
    ),
    (
        "nan-shap-eval",
        arrow_data,
        lambda: with_value(arrow_data(8), "shap_values", 1, float("nan")),
        0.8,
        r"eval_dataset: 'shap_values' of row 1 holds a non-finite value",
    ),
    (
        "short-shap-later-row",
        lambda: rows_with(7, "shap_values", torch.rand(9)),
        None,
        0.8,
        r"'shap_values' of row 7 must hold 16 float values \(one per patch\), got float32 of shape \(9,\)",
    ),
    (
        "float-label",
        lambda: rows_with(3, "labels", 1.5),
        None,
        0.8,
        r"column 'labels', row 3: labels must be int class indices, got float 1.5",
    ),
    (
        "ignore-index-label",
        lambda: rows_with(5, "labels", -100),
        None,
        0.8,
        r"column 'labels', row 5: label -100 is out of range: expected \[0, 4\) \(num_classes = 4 from the model's",
    ),
    (
        "several-bad-rows-counted",
        lambda: with_value(with_value(arrow_data(), "shap_values", 9, float("nan")), "shap_values", 20, float("nan")),
        None,
        0.8,
        r"'shap_values' of row 9 .*\(2 rows in all\)",
    ),
]


@pytest.mark.parametrize(
    "make_train, make_eval, alpha, message", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_examples_are_refused_before_any_step(tmp_path, make_train, make_eval, alpha, message):
    model = tiny.build_model()
    before = model_snapshot(model)
    train_data = make_train()
    eval_data = make_eval() if make_eval else None
    train_before = data_snapshot(train_data)
    output_dir = tmp_path / "run"
    with pytest.raises(DatasetFormatError, match=message) as raised:
        train(model, train_data, make_config(output_dir, alpha=alpha), eval_dataset=eval_data)
    assert isinstance(raised.value, ValueError)
    assert_model_unchanged(model, before)
    assert_data_unchanged(train_data, train_before)
    assert not output_dir.exists()  # nothing written


def test_twins_refuse_a_nan_label_before_the_first_twin(tmp_path):
    base = tiny.build_model()
    before = model_snapshot(base)
    data = with_value(arrow_data(), "shap_values", 12, float("nan"))
    with pytest.raises(DatasetFormatError, match=r"'shap_values' of row 12 holds a non-finite value"):
        train_twins(base, data, make_config(tmp_path / "twins"))
    assert_model_unchanged(base, before)
    assert not (tmp_path / "twins").exists()  # nothing written


# ------------------------------------------------------------------------------ bad settings and output folders
def _file(tmp_path):
    path = tmp_path / "taken"
    path.write_bytes(b"a user's file\n")
    return path, path


def _under_file(tmp_path):
    path = tmp_path / "taken"
    path.write_bytes(b"a user's file\n")
    return path / "run", path


def _mutated(field, value):
    def make(config):
        setattr(config, field, value)  # after construction: train checks again
        return config

    return make


BAD_SETTINGS = [
    # (id, mutate the config, error, message)
    (
        "lr-negative",
        _mutated("learning_rate", -1e-3),
        ValueError,
        r"learning_rate must be a finite number >= 0.*-0.001",
    ),
    ("lr-zero", _mutated("learning_rate", 0.0), ValueError, r"learning_rate must be > 0, got 0"),
    ("lr-nan", _mutated("learning_rate", float("nan")), ValueError, r"learning_rate must be a finite number.*nan"),
    ("epochs-zero", _mutated("num_train_epochs", 0), ValueError, r"num_train_epochs must be an int >= 1, got 0"),
    ("batch-size-zero", _mutated("per_device_batch_size", 0), ValueError, r"per_device_batch_size must be an int >= 1"),
    ("max-steps-zero", _mutated("max_steps", 0), ValueError, r"max_steps must be an int >= 1 or None, got 0"),
    ("alpha-above-1", _mutated("alpha", 1.5), ValueError, r"alpha must be a number in \[0, 1\].*1.5"),
    ("alpha-negative", _mutated("alpha", -0.2), ValueError, r"alpha must be a number in \[0, 1\].*-0.2"),
    ("alpha-string", _mutated("alpha", "0.8"), ValueError, r"alpha must be a number in \[0, 1\].*'0.8'"),
    ("mixed-precision-unknown", _mutated("mixed_precision", "fp8"), ValueError, r"mixed_precision must be one of"),
    ("warmup-fraction-1", _mutated("warmup_steps", 1.0), ValueError, r"warmup_steps must be .*got 1.0"),
    ("output-dir-none", _mutated("output_dir", None), TypeError, r"output_dir must be a non-empty str or os.PathLike"),
    ("resume-from-int", _mutated("resume_from", 3), TypeError, r"resume_from must be None, 'latest' or a checkpoint"),
]


@pytest.mark.parametrize("mutate, error, message", [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS])
def test_bad_settings_are_refused_before_any_step(tmp_path, mutate, error, message):
    model, data = tiny.build_model(), arrow_data(16)
    before, data_before = model_snapshot(model), data_snapshot(data)
    config = mutate(make_config(tmp_path / "run"))
    with pytest.raises(error, match=message):
        train(model, data, config)
    assert_model_unchanged(model, before)
    assert_data_unchanged(data, data_before)
    assert sorted(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "make_path, message",
    [
        (_file, r"output_dir='.*taken' must be a folder .* but '.*taken' is a file"),
        (_under_file, r"output_dir='.*taken/run' must be a folder .*: its parent .*taken is not a folder"),
    ],
    ids=["output-dir-is-a-file", "output-dir-under-a-file"],
)
def test_output_dir_that_is_a_file_is_refused_before_any_step(tmp_path, make_path, message):
    output_dir, user_file = make_path(tmp_path)
    model, data = tiny.build_model(), arrow_data(16)
    before, files = model_snapshot(model), tree_snapshot(tmp_path)
    with pytest.raises(NotADirectoryError, match=message):
        train(model, data, make_config(output_dir))
    assert_model_unchanged(model, before)
    assert tree_snapshot(tmp_path) == files  # the user's file by sha256, and nothing else
    assert user_file.read_bytes() == b"a user's file\n"


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder where nothing can be created: read-only permissions, or (as root, who ignores them) immutable."""
    path = tmp_path / "locked"
    path.mkdir()
    (path / "kept.txt").write_text("kept\n")
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no way to make a folder unwritable")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


@pytest.mark.parametrize("inside", ["", "new/run"], ids=["existing-folder", "folder-to-create"])
def test_unwritable_output_dir_is_refused_before_any_step(unwritable_dir, inside):
    output_dir = unwritable_dir / inside if inside else unwritable_dir
    model, data = tiny.build_model(), arrow_data(16)
    before, files = model_snapshot(model), tree_snapshot(unwritable_dir)
    with pytest.raises(PermissionError, match=r"output_dir='.*locked.*' is not writable: cannot create entries in"):
        train(model, data, make_config(output_dir))
    assert_model_unchanged(model, before)
    assert tree_snapshot(unwritable_dir) == files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of a 2-step run with batch size 8 on 32 examples (alpha 0.8)."""
    reset_accelerate_state()
    output_dir = tmp_path_factory.mktemp("resume") / "run"
    train(tiny.build_model(), arrow_data(), make_config(output_dir, checkpoint_every=2))
    reset_accelerate_state()
    return output_dir / "checkpoints" / "step_00000002"


def _damaged_copy(text):
    def make(checkpoint, tmp_path):
        copy_ = tmp_path / "damaged"
        shutil.copytree(checkpoint, copy_)
        (copy_ / "trainer_state.json").write_text(text)
        return copy_

    return make


BAD_RESUMES = [
    (
        "other-batch-size",
        lambda c, t: c,
        {"per_device_batch_size": 4},
        ValueError,
        r"per_device_batch_size: checkpoint 8 vs this run 4",
    ),
    ("other-alpha", lambda c, t: c, {"alpha": 0.5}, ValueError, r"alpha: checkpoint 0.8 vs this run 0.5"),
    ("other-seed-and-data", lambda c, t: c, {"seed": 3}, ValueError, r"seed: checkpoint 0 vs this run 3"),
    ("not-a-checkpoint", lambda c, t: t / "nowhere", {}, FileNotFoundError, r"is not a checkpoint folder"),
    ("damaged-json", _damaged_copy("{not json"), {}, ValueError, r"trainer_state.json is not valid JSON"),
    ("json-list", _damaged_copy("[1, 2]"), {}, ValueError, r"trainer_state.json must hold a JSON object, got list"),
    (
        "missing-keys",
        _damaged_copy('{"global_step": 2}'),
        {},
        ValueError,
        r"trainer_state.json lacks the key\(s\) \['epoch'",
    ),
]


@pytest.mark.parametrize(
    "where, overrides, error, message", [c[1:] for c in BAD_RESUMES], ids=[c[0] for c in BAD_RESUMES]
)
def test_resume_that_does_not_match_is_refused_before_any_step(checkpoint, tmp_path, where, overrides, error, message):
    resume_from = where(checkpoint, tmp_path)
    model, data = tiny.build_model(), arrow_data()
    before, files, checkpoint_files = model_snapshot(model), tree_snapshot(tmp_path), tree_snapshot(checkpoint)
    with pytest.raises(error, match=message):
        train(model, data, make_config(tmp_path / "run", resume_from=resume_from, **overrides))
    assert_model_unchanged(model, before)
    assert tree_snapshot(tmp_path) == files
    assert tree_snapshot(checkpoint) == checkpoint_files


@pytest.mark.parametrize(
    "world_size, fake_processes, message",
    [
        ("3", 1, r"WORLD_SIZE=3 but Accelerate started 1 process group member\(s\)"),
        ("two", None, r"WORLD_SIZE must be a positive integer, got 'two'"),
        ("0", None, r"WORLD_SIZE must be a positive integer, got '0'"),
    ],
    ids=["more-processes-than-joined", "not-a-number", "zero"],
)
def test_world_size_mismatch_is_refused_before_any_step(tmp_path, monkeypatch, world_size, fake_processes, message):
    monkeypatch.setenv("WORLD_SIZE", world_size)
    if fake_processes is not None:  # a launcher that started 3 processes which did not join one group
        fake = types.SimpleNamespace(num_processes=fake_processes, is_main_process=True)
        monkeypatch.setattr(hf_explvec._process, "PartialState", lambda cpu=False: fake)
    model, data = tiny.build_model(), arrow_data(16)
    before = model_snapshot(model)
    with pytest.raises(ValueError, match=message):
        train(model, data, make_config(tmp_path / "run"))
    assert_model_unchanged(model, before)
    assert sorted(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- faults during a run
class NanAfter(torch.utils.data.Dataset):
    """Finite examples for the first `reads` reads (`train` reads example 0, then all of them to check them),
    NaN pixels afterwards: a transform that goes wrong only during training."""

    def __init__(self, data, reads: int):
        self.data, self.reads = data.with_format("torch"), reads

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        row = dict(self.data[int(index)])
        self.reads -= 1
        if self.reads < 0:
            row["pixel_values"] = torch.full_like(row["pixel_values"], float("nan"))
        return row


class FailsAfter(NanAfter):
    def __getitem__(self, index):
        self.reads -= 1
        if self.reads < 0:
            raise OSError("the disk went away")
        return self.data[int(index)]


FAULTS = [
    # (id, data, settings, error, message)
    (
        "loss-diverges",
        lambda: arrow_data(),
        {"learning_rate": 1e30, "max_grad_norm": None, "max_steps": 6},
        FloatingPointError,
        r"training loss became non-finite \(NaN or Inf\) in optimizer step 2 \(epoch 0\)",
    ),
    (
        "loss-diverges-bf16",
        lambda: arrow_data(),
        {"learning_rate": 1e30, "max_grad_norm": None, "max_steps": 6, "mixed_precision": "bf16"},
        FloatingPointError,
        r"non-finite .* in optimizer step \d",
    ),
    (
        "nan-pixels-appear-in-step-3",
        lambda: NanAfter(arrow_data(), 1 + 32 + 16),
        {"max_steps": 4},
        ValueError,
        r"pixel_values",
    ),
    (
        "data-source-fails-in-step-2",
        lambda: FailsAfter(arrow_data(), 1 + 32 + 8),
        {"max_steps": 4},
        OSError,
        r"the disk went away",
    ),
]


@pytest.mark.parametrize("make_data, settings, error, message", [c[1:] for c in FAULTS], ids=[c[0] for c in FAULTS])
def test_a_failed_run_gives_the_model_back_unchanged_and_saves_no_model(tmp_path, make_data, settings, error, message):
    model = tiny.build_model()
    model.train()  # a training-mode model stays in training mode
    before = model_snapshot(model)
    output_dir = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(model, make_data(), make_config(output_dir, checkpoint_every=1, **settings))
    assert_model_unchanged(model, before)
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "history.json").exists()
    # Checkpoints of the steps before the failure hold finite weights only.
    for weights in output_dir.glob("checkpoints/*/model.safetensors"):
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights


def test_a_refused_run_leaves_a_copy_based_workflow_working(tmp_path):
    """After a refusal the same model trains normally (nothing half-initialised stays behind)."""
    model = tiny.build_model()
    bad = with_value(arrow_data(), "shap_values", 1, float("nan"))
    with pytest.raises(DatasetFormatError, match="row 1"):
        train(model, bad, make_config(tmp_path / "bad"))
    reset_accelerate_state()
    result = train(copy.deepcopy(model), arrow_data(), make_config(tmp_path / "good"))
    assert result.global_step == 2 and (tmp_path / "good" / "model.safetensors").is_file()
