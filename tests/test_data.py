"""hf_explvec.data: SHAP-labelled splits (values, determinism, cache, resume after a kill, 2 processes, Hub)."""

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, HfApi
from PIL import Image

from hf_explvec.attribution import patch_kernel_shap
from hf_explvec.data import (
    example_seed,
    label_dataset,
    load_split,
    push_shap_dataset,
    shap_provenance,
    weights_fingerprint,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "label_tiny.py"
_spec = importlib.util.spec_from_file_location("label_tiny", SCRIPT)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

NUM_SAMPLES = 48  # 3 M for M = 16 patches: well-posed, fast


# One torch thread, as in the scripts' processes: see conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread", "private_datasets_cache")


@pytest.fixture(scope="module")
def model():
    return tiny.build_model()


@pytest.fixture(scope="module")
def processor():
    return tiny.build_processor()


@pytest.fixture(scope="module")
def digits():
    return tiny.build_dataset(8)


def label(dataset, model, processor, output_dir, **overrides):
    settings = {"num_samples": NUM_SAMPLES, "shard_size": 3, "output_dir": output_dir, "show_progress": False}
    return label_dataset(dataset, model, processor, **{**settings, **overrides})


def forward_of(model):
    return lambda x: model(pixel_values=x).logits


# ------------------------------------------------------------------------------------------------ the values
def test_labels_digits_with_provenance(tmp_path, model, processor, digits):
    labelled = label(digits, model, processor, tmp_path / "run")
    assert labelled.column_names == ["image", "label", "shap_values", "shap_target"]
    assert labelled.features["shap_values"] == datasets.Sequence(datasets.Value("float32"), length=16)
    assert labelled.features["shap_target"] == datasets.Value("int64")
    assert labelled.features["label"] == digits.features["label"]
    assert labelled["shap_target"][:] == labelled["label"][:] == digits["label"][:]

    # Each row is patch_kernel_shap of that image alone, with the seed derived from (seed, row index).
    images = [image.convert("RGB") for image in digits["image"]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    values = torch.tensor(labelled["shap_values"][:])
    labels = torch.tensor(digits["label"][:])
    for i in range(len(digits)):
        expected = patch_kernel_shap(
            forward_of(model), pixels[i : i + 1], labels[i : i + 1], patch_size=8, num_samples=NUM_SAMPLES,
            seed=example_seed(0, i),
        )  # fmt: skip
        assert torch.equal(values[i : i + 1], expected), i
    # Efficiency: each row sums to f(image) - f(all-baseline image) for its label.
    with torch.no_grad():
        full = model(pixel_values=pixels).logits.gather(1, labels[:, None])[:, 0]
        empty = model(pixel_values=torch.zeros_like(pixels)).logits.gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(values.sum(dim=1), full - empty, rtol=0, atol=1e-4)

    provenance = shap_provenance(labelled)
    assert provenance["weights_sha256"] == weights_fingerprint(model)
    assert provenance["model"] == "SelfExplainingCLIPVision" and provenance["model_revision"] is None
    expected = {"num_samples": NUM_SAMPLES, "seed": 0, "baseline": 0.0, "value": "logit", "target": "label"}
    assert {key: provenance[key] for key in expected} == expected
    assert (provenance["patch_size"], provenance["num_patches"], provenance["image_size"]) == (8, 16, [32, 32])
    assert provenance["explainer"] == "hf_explvec.attribution.vit.model_kernel_shap"  # embedding-level masking
    assert provenance["source_dataset"] == "sklearn-digits"
    # The input is untouched; the shards are on disk; provenance survives save_to_disk.
    assert digits.column_names == ["image", "label"] and digits.info.description in ("", None)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".manifest.lock", "manifest.json"] + [
        f"shard-0000{i}.parquet" for i in range(3)
    ]
    labelled.save_to_disk(tmp_path / "saved")
    reloaded = datasets.load_from_disk(tmp_path / "saved")
    assert shap_provenance(reloaded) == provenance and reloaded["shap_values"][:] == labelled["shap_values"][:]


def test_values_do_not_depend_on_shards_processes_or_streaming(tmp_path, model, processor, digits):
    by_3 = label(digits, model, processor, tmp_path / "by3", shard_size=3)
    by_5 = label(digits, model, processor, tmp_path / "by5", shard_size=5)
    assert by_3._fingerprint == by_5._fingerprint
    assert by_3["shap_values"][:] == by_5["shap_values"][:]

    stream = label(digits.to_iterable_dataset(), model, processor, tmp_path / "stream", shard_size=2)
    assert isinstance(stream, datasets.IterableDataset)
    assert stream.features["shap_values"] == by_3.features["shap_values"]
    rows = list(stream)
    assert [row["shap_values"] for row in rows] == by_3["shap_values"][:]
    assert [row["shap_target"] for row in rows] == by_3["shap_target"][:]
    assert shap_provenance(stream)["num_patches"] == 16


def test_second_call_is_a_cache_hit(tmp_path, model, processor, digits):
    calls = []

    def explainer(pixel_values, target, **kwargs):  # the default explainer, counted
        calls.append(int(target[0]))
        return patch_kernel_shap(forward_of(model), pixel_values, target, patch_size=8, **kwargs)

    first = label(digits, model, processor, None, explainer=explainer)
    assert len(calls) == 8
    cache = Path(datasets.config.HF_DATASETS_CACHE) / "hf_explvec_shap" / first._fingerprint
    assert (cache / "manifest.json").is_file()
    second = label(digits, model, processor, None, explainer=explainer)
    assert len(calls) == 8  # nothing recomputed
    assert second._fingerprint == first._fingerprint and second["shap_values"][:] == first["shap_values"][:]

    # The key is the input's fingerprint and the provenance (weights by hash), not Python objects: a data set loaded
    # twice from disk (its own fingerprint) and a copy of the model hit the cache.
    digits.save_to_disk(tmp_path / "digits")
    loaded_once = label(datasets.load_from_disk(tmp_path / "digits"), copy.deepcopy(model), processor, None,
                        explainer=explainer)  # fmt: skip
    assert len(calls) == 16
    loaded_twice = label(datasets.load_from_disk(tmp_path / "digits"), copy.deepcopy(model), processor, None,
                         explainer=explainer)  # fmt: skip
    assert len(calls) == 16 and loaded_twice._fingerprint == loaded_once._fingerprint
    assert loaded_twice["shap_values"][:] == first["shap_values"][:]
    # Another seed is another run; resume=False recomputes.
    other = label(digits, model, processor, None, explainer=explainer, seed=1)
    assert len(calls) == 24 and other._fingerprint != first._fingerprint
    assert other["shap_values"][:] != first["shap_values"][:]
    again = label(digits, model, processor, None, explainer=explainer, resume=False)
    assert len(calls) == 32 and again["shap_values"][:] == first["shap_values"][:]


def test_prediction_target_forward_function_and_training_mode(tmp_path, model, processor, digits):
    trained = copy.deepcopy(model).train()
    predicted = label(digits.remove_columns("label"), trained, processor, tmp_path / "p", target="prediction",
                      label_column=None)  # fmt: skip
    assert trained.training  # restored after labelling in eval mode
    pixels = processor(images=[image.convert("RGB") for image in digits["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert predicted["shap_target"][:] == model(pixel_values=pixels).logits.argmax(-1).tolist()

    by_module = label(digits, model, processor, tmp_path / "m")
    by_function = label(digits, forward_of(model), processor, tmp_path / "f", model_id="tiny-digits", patch_size=8)
    assert by_function["shap_values"][:] == by_module["shap_values"][:]
    assert shap_provenance(by_function)["model"] == "tiny-digits"
    assert "weights_sha256" not in shap_provenance(by_function)


def test_image_modes_sizes_and_arrays_are_converted(tmp_path, model, processor):
    from skimage import data as skdata

    rgb = Image.fromarray(skdata.astronaut()).resize((48, 40))  # not square, not 32
    rgba = rgb.copy()
    rgba.putalpha(90)
    palette, gray = rgb.convert("P"), rgb.convert("L")
    digit = tiny.build_dataset(1)["image"][0]  # 8x8 "L"
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})

    def dataset(images):
        return datasets.Dataset.from_dict({"image": images, "label": [3] * len(images)}, features=features)

    mixed = label(dataset([rgb, rgba, palette, gray, digit]), model, processor, tmp_path / "mixed")
    as_rgb = [rgb, rgb, palette.convert("RGB"), gray.convert("RGB"), digit.convert("RGB")]
    reference = label(dataset(as_rgb), model, processor, tmp_path / "rgb")
    assert mixed["shap_values"][:] == reference["shap_values"][:]
    assert [image.mode for image in mixed["image"]] == ["RGB", "RGBA", "P", "L", "L"]  # the images are kept

    arrays = datasets.Dataset.from_dict({"image": [np.asarray(rgb)], "label": [3]})  # uint8 (H, W, 3) lists
    assert label(arrays, model, processor, tmp_path / "arrays")["shap_values"][:] == reference["shap_values"][:1]


def test_image_processor_fallback_gives_the_pixels_of_clips_processor(tmp_path, model):
    """`image_processor_for` falls back to `clip_image_processor` (PIL backend): the same pixel values, bit for bit,
    as the `CLIPImageProcessor` it used before, on images of several sizes and modes."""
    import warnings

    from transformers import CLIPImageProcessor

    from hf_explvec.data import image_processor_for
    from hf_explvec.data.images import clip_image_processor

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 50), (32, 32), (17, 90)]
    ]
    images.append(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").convert("RGB"))
    size = model.config.vision_config.image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without torchvision, transformers warns that it uses the PIL backend
        before = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    fallback = image_processor_for(model, tmp_path / "no-processor-here")
    assert type(fallback) is type(clip_image_processor(size))
    expected = before(images=images, return_tensors="pt")["pixel_values"]
    got = fallback(images=images, return_tensors="pt")["pixel_values"]
    assert got.shape == (4, 3, size, size) and torch.equal(got, expected)
    assert type(image_processor_for(model)) is type(fallback)


# --------------------------------------------------------------------------------------------------- bad input
def _int_labels(digits, labels):
    return datasets.Dataset.from_dict({"image": digits["image"][: len(labels)], "label": labels})


@pytest.mark.parametrize(
    "make, overrides, error, match",
    [
        (lambda d: d.rename_column("image", "img"), {}, ValueError, r"image_column='image' is not a column .*'img'"),
        (lambda d: d.remove_columns("label"), {}, ValueError, r"label_column='label' is not a column"),
        (lambda d: _int_labels(d, [0, 12]), {}, ValueError, r"row 1: label 12 is out of range: expected \[0, 10\)"),
        (lambda d: _int_labels(d, ["0", "7"]), {}, TypeError, r"row 0: labels must be int class indices, got str"),
        (
            lambda d: d.cast_column("label", datasets.Value("int64")).map(
                lambda r, i: {"label": -1 if i else 0}, with_indices=True
            ),
            {},
            ValueError,
            r"row 1: label -1 is out of range",
        ),
        (lambda d: d, {"num_samples": 16}, ValueError, r"num_samples=16 is too small for M=16 .*at least 32"),
        (
            lambda d: d.add_column("shap_values", [[0.0]] * 8),
            {},
            ValueError,
            r"already has column\(s\) \['shap_values'\]",
        ),
        (lambda d: d, {"target": "argmax"}, ValueError, r"target must be one of \('label', 'prediction'\)"),
        (lambda d: d, {"value": "margin"}, ValueError, r"value must be one of"),
        (lambda d: d, {"seed": 1.5}, TypeError, r"seed must be an int, got float"),
        (lambda d: d, {"baseline": "zeros"}, ValueError, r"baseline must be a float, one of \('mean', 'blur'\)"),
        (
            lambda d: datasets.Dataset.from_dict({"image": ["cat.png"], "label": [0]}),
            {},
            TypeError,
            r"column 'image', row 0: expected an image, got str",
        ),
        (lambda d: d.to_pandas(), {}, TypeError, r"must be a datasets.Dataset or IterableDataset, got DataFrame"),
    ],
)
def test_bad_input_raises_before_any_work(tmp_path, model, processor, digits, make, overrides, error, match):
    with pytest.raises(error, match=match):
        label(make(digits), model, processor, tmp_path / "run", **overrides)
    assert not (tmp_path / "run").exists()


def test_bad_model_processor_or_output_dir(tmp_path, model, processor, digits):
    forward = forward_of(model)
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide the processed images of 32x32"):
        label(digits, forward, processor, tmp_path / "a", patch_size=5, model_id="tiny")
    with pytest.raises(ValueError, match=r"model_id is required with a forward function"):
        label(digits, forward, processor, tmp_path / "a", patch_size=8)
    with pytest.raises(ValueError, match=r"patch_size is required"):
        label(digits, forward, processor, tmp_path / "a", model_id="tiny")
    big = type(processor)(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40})
    with pytest.raises(ValueError, match=r"gives 40x40 images but the model expects 32x32"):
        label(digits, model, big, tmp_path / "a")
    with pytest.raises(TypeError, match=r"must be a torch.nn.Module or a callable"):
        label(digits, "openai/clip-vit-base-patch32", processor, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    label(digits, model, processor, tmp_path / "run")
    with pytest.raises(ValueError, match=r"holds SHAP values of another labelling run"):
        label(digits, model, processor, tmp_path / "run", seed=1)
    overwritten = label(digits, model, processor, tmp_path / "run", seed=1, resume=False)
    assert shap_provenance(overwritten)["seed"] == 1


def test_damaged_shard_is_recomputed_and_a_changed_stream_is_refused(tmp_path, model, processor, digits):
    reference = label(digits, model, processor, tmp_path / "run")
    damaged = tmp_path / "run" / "shard-00001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:50])  # e.g. a disk filled up outside our atomic write
    untouched = (tmp_path / "run" / "shard-00000.parquet").stat().st_mtime_ns
    assert label(digits, model, processor, tmp_path / "run")["shap_values"][:] == reference["shap_values"][:]
    assert (tmp_path / "run" / "shard-00000.parquet").stat().st_mtime_ns == untouched

    # A stream has no fingerprint: each shard records a hash of its inputs, checked when it is skipped.
    label(digits.to_iterable_dataset(), model, processor, tmp_path / "stream")
    swapped = digits.select([0, 2, 1, 3, 4, 5, 6, 7]).flatten_indices().to_iterable_dataset()  # same first image
    with pytest.raises(ValueError, match=r"shard-00000.parquet was computed from other inputs than rows 0..2"):
        label(swapped, model, processor, tmp_path / "stream")
    other = digits.select(range(7, -1, -1)).flatten_indices().to_iterable_dataset()  # another first image
    assert [row["shap_target"] for row in label(other, model, processor, None)] == digits["label"][::-1]


# ---------------------------------------------------------------------------------- processes: kill, launch
def _script_env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "sub_cache")}


def test_killed_run_resumes_without_recomputing_finished_shards(tmp_path, model, processor):
    out, result = tmp_path / "shards", tmp_path / "result.json"
    command = [sys.executable, str(SCRIPT), "--output_dir", str(out), "--result", str(result)]
    command += ["--num_examples", "8", "--shard_size", "2", "--num_samples", str(NUM_SAMPLES)]
    # 0.5 s per forward call, one call per image: a shard every second once the process has started.
    slow = subprocess.Popen([*command, "--slow", "0.5"], env=_script_env(tmp_path), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("shard-*.parquet")) and time.monotonic() < deadline and slow.poll() is None:
            time.sleep(0.02)
        slow.send_signal(signal.SIGKILL)
    finally:
        slow.wait(timeout=30)
    assert slow.returncode == -signal.SIGKILL
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert 1 <= len(finished) < 4, finished
    assert not result.exists()

    rerun = subprocess.run(command, check=False, env=_script_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{4 - len(finished)} of its 4 shards to label" in rerun.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished  # not rewritten
    shards = [f"shard-0000{i}.parquet" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == [".manifest.lock", "manifest.json"] + shards

    uninterrupted = label(tiny.build_dataset(8), model, processor, tmp_path / "reference", shard_size=8)
    resumed = json.loads(result.read_text())
    assert resumed["fingerprint"] == uninterrupted._fingerprint
    assert resumed["shap_values"] == uninterrupted["shap_values"][:]
    assert resumed["shap_target"] == uninterrupted["shap_target"][:]


def test_two_processes_with_accelerate_launch(tmp_path, model, processor):
    out, result = tmp_path / "shards", tmp_path / "result.json"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT)]
    launch += ["--output_dir", str(out), "--result", str(result), "--num_examples", "10", "--shard_size", "2"]
    launch += ["--num_samples", str(NUM_SAMPLES)]
    env = {**_script_env(tmp_path), "ACCELERATE_USE_CPU": "1"}
    completed = subprocess.run(launch, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "process 0/2: 3 of its 3 shards" in completed.stderr and "process 1/2: 2 of its 2 shards" in completed.stderr

    merged = json.loads(result.read_text())
    single = label(tiny.build_dataset(10), model, processor, tmp_path / "single", shard_size=4)
    assert merged["num_processes"] == 2 and merged["fingerprint"] == single._fingerprint
    assert merged["shap_values"] == single["shap_values"][:]  # exactly, in the original order
    assert merged["shap_target"] == single["shap_target"][:]


# -------------------------------------------------------------------------------------------------------- Hub
def test_push_then_load_dataset_round_trip_with_card(local_hub, tmp_path, model, processor, digits):
    labelled = label(digits, model, processor, tmp_path / "run")
    commit = push_shap_dataset(labelled, "org/digits-shap")
    assert len(commit.oid) == 40

    loaded = datasets.load_dataset("org/digits-shap", split="train")
    assert loaded.features == labelled.features
    for column in ("label", "shap_values", "shap_target"):
        assert loaded[column][:] == labelled[column][:], column
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded["image"], labelled["image"], strict=True)
    )

    card = DatasetCard.load("org/digits-shap")
    metadata = card.data.to_dict()
    assert metadata["library_name"] == "hf_explvec"
    assert {"hf_explvec", "explainability", "kernel-shap"} <= set(metadata["tags"])
    assert metadata["shap_provenance"] == shap_provenance(labelled)
    assert metadata["dataset_info"]["splits"][0]["num_examples"] == 8 and metadata["configs"]
    assert "| num_samples | 48 |" in card.text and "`shap_values`: 16 float32" in card.text
    assert shap_provenance(load_split("org/digits-shap", "train")) == shap_provenance(labelled)


def test_push_keeps_a_readme_the_user_wrote(local_hub, tmp_path, model, processor, digits):
    labelled = label(digits.select(range(4)), model, processor, tmp_path / "run")
    push_shap_dataset(labelled, "org/mine")
    readme = "---\nlicense: mit\ntags:\n- digits\n---\n# My digits\n\nWritten by hand.\n"
    HfApi().upload_file(path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="org/mine",
                        repo_type="dataset")  # fmt: skip
    push_shap_dataset(labelled, "org/mine")

    card = DatasetCard.load("org/mine")
    assert card.text.strip() == "# My digits\n\nWritten by hand."
    assert card.data.license == "mit" and {"digits", "hf_explvec"} <= set(card.data.tags)
    assert card.data.to_dict()["shap_provenance"]["num_samples"] == NUM_SAMPLES
    assert datasets.load_dataset("org/mine", split="train")["shap_values"][:] == labelled["shap_values"][:]


def test_load_split_errors_name_the_repo_and_endpoint(local_hub, tmp_path, model, processor, digits):
    with pytest.raises(FileNotFoundError, match=rf"'org/missing'.*{local_hub.endpoint}"):
        load_split("org/missing")
    with pytest.raises(ValueError, match="no SHAP provenance"):
        push_shap_dataset(digits.add_column("shap_values", [[0.0]] * 8).add_column("shap_target", [0] * 8), "org/x")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['shap_values', 'shap_target'\]"):
        push_shap_dataset(digits, "org/x")
