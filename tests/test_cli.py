"""The command line, end to end through the loopback Hub."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, load_from_disk
from PIL import Image as PILImage

from hf_explvec import SelfExplainingCLIPVision, shap_provenance
from hf_explvec.cli import main
from hf_explvec.data import load_split
from hf_explvec.testing import tiny_clip_model


def test_label_command_by_name_save_and_push(local_hub, tmp_path, capsys):
    torch.set_num_threads(1)
    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["a", "b"], class_embeddings=torch.randn(2, 16))
    model.push_to_hub("org/model")
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    Dataset.from_dict({"image": images, "label": [0, 1, 0]}, features=features).push_to_hub("org/images")

    main([
        "label", "--model", "org/model", "--dataset", "org/images", "--num-samples", "64", "--baseline", "mean",
        "--shard-dir", str(tmp_path / "shards"), "--save-to", str(tmp_path / "saved"), "--push-to", "org/images-shap",
    ])  # fmt: skip
    assert "labelled 3 examples of org/images[train]" in capsys.readouterr().out
    saved = load_from_disk(str(tmp_path / "saved"))
    assert len(saved["shap_values"][0]) == 16 and saved["shap_target"] == [0, 1, 0]
    provenance = shap_provenance(saved)
    assert provenance["model"] == "org/model" and provenance["baseline"] == "mean"
    pushed = load_split("org/images-shap", "train")
    assert pushed["shap_values"] == saved["shap_values"]


def test_label_command_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["label", "--model", "m"])  # --dataset is required
    assert "--dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ errors and start-up
def test_help_answers_without_importing_torch():
    code = (
        "import sys, hf_explvec_cli\n"
        "try:\n    hf_explvec_cli.main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'hf_explvec') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: hf-explvec" in done.stdout and done.stdout.strip().endswith("[]")


def _fails(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars may share stderr
    assert len(errors) == 1 and errors[0].startswith("hf-explvec: error: "), err
    return exit.value.code, errors[0] + "\n"


def test_missing_model_folder_is_one_line_and_exit_1(tmp_path, capsys):
    code, err = _fails(["label", "--model", str(tmp_path / "no-such-model"), "--dataset", "x"], capsys)
    assert code == 1
    assert err.startswith("hf-explvec: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "no-such-model" in err


@pytest.fixture
def published(local_hub):
    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["a", "b"], class_embeddings=torch.randn(2, 16))
    model.push_to_hub("org/model")
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    Dataset.from_dict({"image": images, "label": [0, 1]}, features=features).push_to_hub("org/images")
    return local_hub


def test_missing_dataset_is_one_line_and_exit_1(published, capsys):
    code, err = _fails(["label", "--model", "org/model", "--dataset", "org/no-such-data"], capsys)
    assert code == 1 and err.startswith("hf-explvec: error: ") and err.count("\n") == 1
    assert "org/no-such-data" in err


def test_bad_value_is_a_usage_error_exit_2_and_writes_nothing(published, tmp_path, capsys):
    argv = ["label", "--model", "org/model", "--dataset", "org/images", "--num-samples", "3"]
    code, err = _fails([*argv, "--save-to", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("hf-explvec: error: ValueError: ") and "num_samples" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="num_samples"):  # --debug: the exception itself, with its traceback
        main([*argv, "--debug"])
