"""The command line, end to end through the loopback Hub."""

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
