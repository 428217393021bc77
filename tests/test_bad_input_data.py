"""Issue 9, data pipeline: bad input to `label_dataset` / `load_split` / `push_shap_dataset`, non-finite values, corrupt
images and corrupt shards. Each case asserts the error type, a message naming the problem, and that nothing changed
(the data set by its data, files by SHA-256)."""

import hashlib
import importlib.util
import io
import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hf_explvec.data import example_seed, label_dataset, load_split, push_shap_dataset, shap_provenance

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("label_tiny", ROOT / "scripts" / "label_tiny.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

NUM_SAMPLES = 48  # 3 M for M = 16 patches
BAD_ROW = 4  # in shard 1 (rows 3..5) with shard_size=3: shard 0 is finished before the fault


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model, processor, digits):
    """A finished labelling run of `digits` (default settings): bad calls with the same output_dir must leave it."""
    directory = tmp_path_factory.mktemp("finished") / "run"
    label(digits, model, processor, directory)
    return directory


def label(dataset, model, processor, output_dir, **overrides):
    settings = {"num_samples": NUM_SAMPLES, "shard_size": 3, "output_dir": output_dir, "show_progress": False}
    return label_dataset(dataset, model, processor, **{**settings, **overrides})


def files_sha256(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dataset_state(dataset):
    """What a failed call must not change: the data (Arrow table), fingerprint, columns, features and info."""
    if not isinstance(dataset, datasets.Dataset):
        return repr(type(dataset))
    return (dataset.data.table, dataset._fingerprint, dataset.column_names, dataset.features, dataset.info)


def assert_same_state(before, after):
    if isinstance(before, tuple):
        assert before[0].equals(after[0])
        assert before[1:] == after[1:]
    else:
        assert before == after


def _int_labels(digits, labels):
    return datasets.Dataset.from_dict({"image": digits["image"][: len(labels)], "label": labels})


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _with_image_bytes(digits, row: int, data: bytes):
    """`digits` with the image of `row` replaced by `data` (encoded bytes, decoded by `datasets` when read)."""
    images = [{"bytes": _png(image), "path": None} for image in digits["image"]]
    images[row] = {"bytes": data, "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": digits.features["label"]})
    return datasets.Dataset.from_dict({"image": images, "label": digits["label"]}, features=features)


# ----------------------------------------------------------------------------------- label_dataset: bad input
class _Output:
    """Where the call writes: a fresh folder (must stay absent), the finished run (must stay as is), a file."""

    FRESH, FINISHED, FILE, UNDER_FILE = "fresh", "finished", "file", "under_file"


LABEL_CASES = [
    # (id, make dataset, overrides, output, error, match)
    ("no-image-column", lambda d: d.rename_column("image", "img"), {}, _Output.FRESH, ValueError,
     r"image_column='image' is not a column .*'img'"),
    ("no-label-column", lambda d: d.remove_columns("label"), {}, _Output.FRESH, ValueError,
     r"label_column='label' is not a column"),
    ("target-label-without-column", lambda d: d, {"label_column": None}, _Output.FRESH, ValueError,
     r'target="label" needs a label_column'),
    ("label-out-of-range", lambda d: _int_labels(d, [0, 12]), {}, _Output.FRESH, ValueError,
     r"column 'label', row 1: label 12 is out of range: expected \[0, 10\)"),
    ("label-str", lambda d: _int_labels(d, ["0", "7"]), {}, _Output.FRESH, TypeError,
     r"column 'label', row 0: labels must be int class indices, got str"),
    ("label-float", lambda d: _int_labels(d, [0.0, 1.0]), {}, _Output.FRESH, TypeError,
     r"row 0: labels must be int class indices, got float"),
    ("shap-column-exists", lambda d: d.add_column("shap_values", [[0.0]] * 8), {}, _Output.FRESH, ValueError,
     r"already has column\(s\) \['shap_values'\]"),
    ("num-samples-too-small", lambda d: d, {"num_samples": 16}, _Output.FRESH, ValueError,
     r"num_samples=16 is too small for M=16 patches: need at least 32"),
    ("num-samples-float", lambda d: d, {"num_samples": 48.0}, _Output.FRESH, TypeError,
     r"num_samples must be an int, got float"),
    ("batch-size-zero", lambda d: d, {"batch_size": 0}, _Output.FRESH, ValueError,
     r"batch_size must be a positive int, got 0"),
    ("shard-size-zero", lambda d: d, {"shard_size": 0}, _Output.FRESH, ValueError,
     r"shard_size must be a positive int, got 0"),
    ("bad-target", lambda d: d, {"target": "argmax"}, _Output.FRESH, ValueError,
     r"target must be one of \('label', 'prediction'\), got 'argmax'"),
    ("bad-value", lambda d: d, {"value": "margin"}, _Output.FRESH, ValueError, r"value must be one of .*'margin'"),
    ("bad-baseline-name", lambda d: d, {"baseline": "zeros"}, _Output.FRESH, ValueError,
     r"baseline must be a float, one of \('mean', 'blur'\)"),
    ("bad-baseline-shape", lambda d: d, {"baseline": torch.zeros(3, 5, 5)}, _Output.FRESH, ValueError, r"baseline"),
    ("seed-negative", lambda d: d, {"seed": -1}, _Output.FINISHED, ValueError,
     r"seed must be an int in \[0, 2\*\*64\), got -1"),
    ("seed-beyond-64-bits", lambda d: d, {"seed": 2**64}, _Output.FINISHED, ValueError,
     r"seed must be an int in \[0, 2\*\*64\), got 18446744073709551616"),
    ("seed-float", lambda d: d, {"seed": 1.5}, _Output.FINISHED, TypeError, r"seed must be an int, got float"),
    ("seed-str", lambda d: d, {"seed": "0"}, _Output.FINISHED, TypeError, r"seed must be an int, got str"),
    ("image-str", lambda d: datasets.Dataset.from_dict({"image": ["cat.png"], "label": [0]}), {}, _Output.FRESH,
     TypeError, r"column 'image', row 0: expected an image, got str"),
    ("image-float-array", lambda d: datasets.Dataset.from_dict({"image": [np.zeros((8, 8)) + 0.5], "label": [0]}),
     {}, _Output.FRESH, TypeError, r"column 'image', row 0: an array image must hold integers in \[0, 255\]"),
    ("corrupt-first-image", lambda d: _with_image_bytes(d, 0, b"\x89PNG\r\n\x1a\n broken"), {}, _Output.FRESH,
     ValueError, r"column 'image', row 0: the image cannot be decoded"),
    ("pandas", lambda d: d.to_pandas(), {}, _Output.FRESH, TypeError,
     r"dataset must be a datasets.Dataset or IterableDataset, got DataFrame"),
    ("empty", lambda d: d.select([]), {}, _Output.FRESH, ValueError, r"the data set is empty"),
    ("output-dir-is-a-file", lambda d: d, {}, _Output.FILE, NotADirectoryError,
     r"output_dir=.*run.* cannot be a folder of shards: .*run' is a file"),
    ("output-dir-under-a-file", lambda d: d, {}, _Output.UNDER_FILE, NotADirectoryError,
     r"cannot be a folder of shards: .*run' is a file"),
    ("output-dir-of-another-run", lambda d: d.select(range(6)), {}, _Output.FINISHED, ValueError,
     r"holds SHAP values of another labelling run"),
    ("patch-size-does-not-divide", lambda d: d, {"patch_size": 5}, _Output.FRESH, ValueError,
     r"patch_size=5 does not divide the processed images of 32x32"),
]  # fmt: skip


@pytest.mark.parametrize(
    "make, overrides, output, error, match", [case[1:] for case in LABEL_CASES], ids=[case[0] for case in LABEL_CASES]
)
def test_label_dataset_bad_input_changes_nothing(
    tmp_path, model, processor, digits, finished_run, make, overrides, output, error, match
):
    dataset = make(digits)
    directory = tmp_path / "run"
    if output == _Output.FINISHED:
        shutil.copytree(finished_run, directory)
    elif output == _Output.FILE:
        directory.write_bytes(b"not a folder")
    elif output == _Output.UNDER_FILE:
        directory.write_bytes(b"not a folder")
        directory = directory / "inner"
    files, state = files_sha256(tmp_path / "run"), dataset_state(dataset)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    with pytest.raises(error, match=match):
        label(dataset, model, processor, directory, **overrides)

    assert files_sha256(tmp_path / "run") == files
    assert_same_state(state, dataset_state(dataset))
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize(
    "text, match",
    [
        ("[1, 2", r"cannot read the labelling manifest .*manifest.json"),
        ("[1, 2]", r"the labelling manifest .*manifest.json must hold a JSON object, got list"),
    ],
    ids=["garbage", "not-an-object"],
)
def test_bad_manifest_is_named_and_left(tmp_path, model, processor, digits, text, match):
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "manifest.json").write_text(text)
    files = files_sha256(directory)
    with pytest.raises(ValueError, match=match):
        label(digits, model, processor, directory)
    assert files_sha256(directory) == files


def test_shard_store_refuses_non_finite_values(tmp_path):
    from hf_explvec.data.shards import ShardStore

    store = ShardStore(tmp_path / "run", "fingerprint", 3, 4)
    store.prepare({}, resume=True)
    files = files_sha256(tmp_path / "run")
    values = np.zeros((3, 4), dtype=np.float32)
    values[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"row 4: its SHAP values are not finite \(NaN or Inf\); shard 1 is not"):
        store.write(1, np.arange(3, 6), values, np.zeros(3, dtype=np.int64), "sha")
    assert files_sha256(tmp_path / "run") == files


# ---------------------------------------------------------------------------- label_dataset: faults mid-run
def _nan_for_white(model, bad_value):
    """The model's logits, except `bad_value` for images mostly white (row BAD_ROW, and its masked copies with at
    least a fifth of the white left)."""

    def forward(pixel_values):
        logits = model(pixel_values=pixel_values).logits
        white = (pixel_values > 1.9).float().mean(dim=(1, 2, 3)) > 0.2  # CLIP-normalised 255 is 1.93 to 2.15
        return torch.where(white[:, None], torch.full_like(logits, bad_value), logits)

    return forward


def _white_row(digits):
    """`digits` with row BAD_ROW a white 8x8 image (mode "L", like the others)."""
    images = list(digits["image"])
    images[BAD_ROW] = Image.new("L", (8, 8), 255)
    return datasets.Dataset.from_dict({"image": images, "label": digits["label"]}, features=digits.features)


class _NaNPixels:
    """The tiny processor, with NaN pixel values for 16x16 images (only row BAD_ROW is 16x16)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images, return_tensors="pt"):
        pixels = self.processor(images=images, return_tensors=return_tensors)["pixel_values"]
        for i, image in enumerate(images):
            if image.size == (16, 16):
                pixels[i, 0, 3, 3] = float("nan")
        return {"pixel_values": pixels}


def _big_row(digits):
    images = list(digits["image"])
    images[BAD_ROW] = images[BAD_ROW].resize((16, 16))
    return datasets.Dataset.from_dict({"image": images, "label": digits["label"]}, features=digits.features)


def _nan_explainer(model):
    from hf_explvec.attribution import patch_kernel_shap

    forward = lambda x: model(pixel_values=x).logits  # noqa: E731

    def explainer(pixel_values, target, *, seed, **kwargs):
        values = patch_kernel_shap(forward, pixel_values, target, patch_size=8, seed=seed, **kwargs)
        return values * float("nan") if seed == example_seed(0, BAD_ROW) else values

    return explainer


FAULT_CASES = [
    # (id, make dataset, model -> model_or_forward_fn, processor wrapper, overrides, match)
    ("forward-nan", _white_row, lambda m: _nan_for_white(m, float("nan")), None,
     {"model_id": "tiny", "patch_size": 8}, rf"column 'image', row {BAD_ROW}: .*(not finite|NaN)"),
    ("forward-inf", _white_row, lambda m: _nan_for_white(m, float("inf")), None,
     {"model_id": "tiny", "patch_size": 8}, rf"column 'image', row {BAD_ROW}: .*(not finite|Inf)"),
    ("forward-nan-prediction", _white_row, lambda m: _nan_for_white(m, float("nan")), None,
     {"model_id": "tiny", "patch_size": 8, "target": "prediction"},
     rf"column 'image', row {BAD_ROW}: the model's scores are not finite"),
    ("explainer-nan", lambda d: d, lambda m: m, None, {"explainer": "nan"},
     rf"column 'image', row {BAD_ROW}: the Kernel SHAP values are not finite"),
    ("nan-pixels", _big_row, lambda m: m, _NaNPixels, {},
     rf"column 'image', row {BAD_ROW}: pixel_values are not finite"),
    ("corrupt-image", lambda d: _with_image_bytes(d, BAD_ROW, b"GIF89a not really"), lambda m: m, None, {},
     rf"column 'image', row {BAD_ROW}: the image cannot be decoded"),
    ("truncated-image", lambda d: _with_image_bytes(d, BAD_ROW, _png(d["image"][0].resize((64, 64)))[:60]),
     lambda m: m, None, {}, rf"column 'image', row {BAD_ROW}: the image cannot be decoded"),
]  # fmt: skip


@pytest.mark.parametrize("streaming", [False, True], ids=["dataset", "stream"])
@pytest.mark.parametrize(
    "make, subject, wrap, overrides, match", [case[1:] for case in FAULT_CASES], ids=[case[0] for case in FAULT_CASES]
)
def test_fault_mid_run_names_the_row_and_writes_no_shard_for_it(
    tmp_path, model, processor, digits, make, subject, wrap, overrides, match, streaming
):
    dataset = make(digits)
    state = dataset_state(dataset)
    overrides = dict(overrides)
    if overrides.get("explainer") == "nan":
        overrides["explainer"] = _nan_explainer(model)
    source = dataset.to_iterable_dataset() if streaming else dataset

    with pytest.raises(ValueError, match=match):
        label(source, subject(model), wrap(processor) if wrap else processor, tmp_path / "run", **overrides)

    assert_same_state(state, dataset_state(dataset))
    directory = tmp_path / "run"
    shards = sorted(p.name for p in directory.glob("shard-*.parquet"))
    assert shards == ["shard-00000.parquet"]  # rows 0..2 are done; no shard holds row BAD_ROW
    assert not list(directory.glob(".*.tmp"))
    recorded = json.loads((directory / "manifest.json").read_text())["shards"]
    assert list(recorded) == ["shard-00000.parquet"]
    values = pq.read_table(directory / "shard-00000.parquet").column("shap_values").to_pylist()
    assert np.isfinite(np.asarray(values)).all()


# ------------------------------------------------------------------------------------------ corrupt shards
def test_corrupt_shard_with_readable_footer_is_recomputed_on_resume(tmp_path, model, processor, digits, caplog):
    clean = label(digits, model, processor, tmp_path / "clean")
    label(digits, model, processor, tmp_path / "run")
    damaged = tmp_path / "run" / "shard-00001.parquet"
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 4  # inside the column chunks, far from the footer at the end
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    damaged.write_bytes(bytes(data))
    assert pq.ParquetFile(damaged).metadata.num_rows == 3  # the footer still reads: it looks finished
    untouched = (tmp_path / "run" / "shard-00000.parquet").stat().st_mtime_ns

    with caplog.at_level(logging.WARNING, logger="hf_explvec"):
        resumed = label(digits, model, processor, tmp_path / "run")

    assert resumed["shap_values"][:] == clean["shap_values"][:]  # identical to a clean run
    assert resumed["shap_target"][:] == clean["shap_target"][:]
    assert any("shard-00001.parquet is corrupt" in record.getMessage() for record in caplog.records)
    assert (tmp_path / "run" / "shard-00000.parquet").stat().st_mtime_ns == untouched  # only the bad one redone
    assert files_sha256(tmp_path / "run") == files_sha256(tmp_path / "clean")


def test_shard_without_a_recorded_checksum_is_recomputed(tmp_path, model, processor, digits, caplog):
    """A run killed between moving a shard into place and recording its checksum: the shard is redone."""
    clean = label(digits, model, processor, tmp_path / "run")
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["shards"]["shard-00002.parquet"]
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with caplog.at_level(logging.WARNING, logger="hf_explvec"):
        resumed = label(digits, model, processor, tmp_path / "run")
    assert resumed["shap_values"][:] == clean["shap_values"][:]
    assert any("shard-00002.parquet has no checksum" in record.getMessage() for record in caplog.records)
    assert "shard-00002.parquet" in json.loads(manifest_path.read_text())["shards"]


def test_shard_corrupted_after_it_was_checked_is_named_when_read(tmp_path, model, processor, digits):
    from hf_explvec.data.shards import ShardStore

    label(digits, model, processor, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    store = ShardStore(tmp_path / "run", manifest["fingerprint"], 3, 16)
    damaged = tmp_path / "run" / "shard-00002.parquet"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 4] ^= 0xFF
    damaged.write_bytes(bytes(data))
    files = files_sha256(tmp_path / "run")
    with pytest.raises(ValueError, match=r"shard .*shard-00002.parquet is corrupt: its SHA-256 is [0-9a-f]{64}"):
        store.read(3, 8)
    assert files_sha256(tmp_path / "run") == files


# ------------------------------------------------------------------------------------- load_split, push
@pytest.fixture
def labelled(tmp_path, model, processor, digits):
    return label(digits.select(range(4)), model, processor, tmp_path / "labelled")


PUSH_CASES = [
    ("not-a-dataset", lambda d: d.to_pandas(), "org/x", {}, TypeError, r"must be a datasets.Dataset, got DataFrame"),
    ("stream", lambda d: d.to_iterable_dataset(), "org/x", {}, TypeError,
     r"must be a datasets.Dataset, got IterableDataset"),
    ("no-shap-columns", lambda d: d.remove_columns(["shap_values", "shap_target"]), "org/x", {}, ValueError,
     r"lacks column\(s\) \['shap_values', 'shap_target'\]"),
    ("no-shap-target", lambda d: d.remove_columns("shap_target"), "org/x", {}, ValueError,
     r"lacks column\(s\) \['shap_target'\]"),
    ("no-provenance", lambda d: _without_provenance(d), "org/x", {}, ValueError, r"no SHAP provenance"),
    ("provenance-not-dict", lambda d: d, "org/x", {"provenance": "seed=0"}, TypeError,
     r"provenance must be a dict .*got str"),
    ("repo-id-not-str", lambda d: d, 42, {}, TypeError, r"repo_id must be a str like 'org/name', got int"),
    ("repo-id-empty", lambda d: d, " ", {}, ValueError, r"repo_id must be a repo id like 'org/name', got ' '"),
]  # fmt: skip


def _without_provenance(dataset):
    copy = dataset.select(range(len(dataset)))
    copy.info.description = ""
    return copy


@pytest.mark.parametrize(
    "make, repo_id, overrides, error, match", [case[1:] for case in PUSH_CASES], ids=[case[0] for case in PUSH_CASES]
)
def test_push_shap_dataset_bad_input_pushes_nothing(
    local_hub, tmp_path, labelled, make, repo_id, overrides, error, match
):
    dataset = make(labelled)
    state, hub_files = dataset_state(dataset), files_sha256(tmp_path / "hub")
    with pytest.raises(error, match=match):
        push_shap_dataset(dataset, repo_id, **overrides)
    assert_same_state(state, dataset_state(dataset))
    assert files_sha256(tmp_path / "hub") == hub_files


def test_load_split_bad_input(local_hub, tmp_path, labelled):
    push_shap_dataset(labelled, "org/digits")
    hub_files = files_sha256(tmp_path / "hub")
    with pytest.raises(FileNotFoundError, match=rf"'org/missing'.*{local_hub.endpoint}"):
        load_split("org/missing")
    with pytest.raises(ValueError, match=r"Unknown split \"validation\".*\['train'\]"):
        load_split("org/digits", "validation")
    with pytest.raises(TypeError, match=r"name_or_path must be a str or Path, got int"):
        load_split(42)
    with pytest.raises(ValueError, match=r"name_or_path must name a data set .*got ''"):
        load_split("")
    assert files_sha256(tmp_path / "hub") == hub_files
    assert shap_provenance(load_split("org/digits")) == shap_provenance(labelled)
