"""Bad input to the demo (issue 9): settings refused by `DemoConfig` / `quick_config` and `run`, each with a typed
error whose message names the setting and the value, before anything is written to the output folder."""

import pytest

from hf_explvec.demo import DemoConfig, quick_config, run
from hf_explvec.demo.config import safe_file_name
from hf_explvec.demo.report import heatmap_file_name
from hf_explvec.testing import tiny_clip_model

CONFIG_CASES = [
    # (id, overrides, error, message)
    ("no lambda 0", {"lambdas": (0.5, 1.0)}, ValueError, r"lambdas must contain 0.0.*got \[0.5, 1.0\]"),
    ("NaN lambda", {"lambdas": (0.0, float("nan"))}, ValueError, r"lambdas\[1\] must be finite, got nan"),
    ("string lambda", {"lambdas": (0.0, "0.5")}, TypeError, r"lambdas\[1\] must be a real number, got str"),
    ("repeated lambda", {"lambdas": (0.0, 0.5, 0.5)}, ValueError, r"lambdas must not repeat a value"),
    ("lambdas as a str", {"lambdas": "0 0.5"}, TypeError, r"lambdas must be a tuple or list, got str"),
    ("targets as a str", {"targets": "texture_tiles"}, TypeError, r"targets must be a tuple or list, got str"),
    ("no targets", {"targets": ()}, ValueError, r"targets is empty"),
    ("repeated target", {"targets": ("texture_tiles", "texture_tiles")}, ValueError,
     r"targets must not repeat a name, got \['texture_tiles', 'texture_tiles'\]"),
    ("empty target name", {"targets": ("",)}, TypeError, r"targets must be non-empty str names, got \[''\]"),
    ("train size 0", {"train_size": 0}, ValueError, r"train_size must be >= 1, got 0"),
    ("float batch size", {"batch_size": 2.5}, TypeError, r"batch_size must be an int, got float"),
    ("bool epochs", {"num_train_epochs": True}, TypeError, r"num_train_epochs must be an int, got bool"),
    ("negative seed", {"seed": -1}, ValueError, r"seed must be >= 0, got -1"),
    ("alpha 1", {"alpha": 1.0}, ValueError, r"alpha must be in \[0, 1\) .*got 1.0"),
    ("tolerance above 1", {"max_accuracy_drop": 4.0}, ValueError,
     r"max_accuracy_drop is a fraction in \[0, 1\], got 4.0"),
    ("NaN goal", {"goal_e_rmse_gain": float("nan")}, ValueError, r"goal_e_rmse_gain must be finite, got nan"),
    ("zero learning rate", {"learning_rate": 0.0}, ValueError, r"learning_rate must be > 0, got 0.0"),
    ("image not a multiple of the patch", {"image_size": 30}, ValueError,
     r"image_size must be a multiple of patch_size, got image_size=30, patch_size=8"),
    ("unknown explained score", {"shap_value": "proba"}, ValueError, r"'logit', 'log_prob' or 'prob', got 'proba'"),
    ("zero comparison budget", {"comparison_num_samples": (64, 0)}, ValueError,
     r"comparison_num_samples\[1\] must be >= 1, got 0"),
    ("output dir not a path", {"output_dir": 3}, TypeError, r"output_dir must be a str or a path, got int"),
    ("device not a str", {"device": 0}, TypeError, r"device must be a str or None, got int"),
    ("progress not a bool", {"show_progress": "no"}, TypeError, r"show_progress must be a bool, got str"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "error", "message"), [case[1:] for case in CONFIG_CASES], ids=[case[0] for case in CONFIG_CASES]
)
def test_demo_config_refuses_bad_settings_and_writes_nothing(overrides, error, message, tmp_path):
    output_dir = tmp_path / "report"
    settings = {"output_dir": str(output_dir), **overrides}
    with pytest.raises(error, match=message):
        DemoConfig(**settings)
    with pytest.raises(error, match=message):
        quick_config(**settings)
    assert not output_dir.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"clip": "model"}, ValueError, r"a CLIP model was given without its tokenizer"),
        ({"tokenizer": "tokenizer"}, ValueError, r"a tokenizer was given without its CLIP model"),
        ({"data": ["not", "a", "dict"]}, TypeError, r"data must be a dict .*got list"),
        ({"config": {"output_dir": "x"}}, TypeError, r"config must be a DemoConfig, got dict"),
    ],
    ids=["model without tokenizer", "tokenizer without model", "data not a mapping", "config not a DemoConfig"],
)
def test_run_refuses_bad_arguments_before_writing_anything(arguments, error, message, tmp_path):
    output_dir = tmp_path / "report"
    config = arguments.pop("config", quick_config(str(output_dir), show_progress=False))
    with pytest.raises(error, match=message):
        run(config, **arguments)
    assert not output_dir.exists() and list(tmp_path.iterdir()) == []


def test_run_with_a_real_model_but_no_tokenizer_leaves_the_model_unchanged(tmp_path):
    clip = tiny_clip_model()
    state = {key: value.clone() for key, value in clip.state_dict().items()}
    with pytest.raises(ValueError, match="without its tokenizer"):
        run(quick_config(str(tmp_path / "report"), show_progress=False), clip=clip)
    assert all(value.equal(clip.state_dict()[key]) for key, value in state.items())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("digits_on_photos", "heatmaps_digits_on_photos.png"),
        ("org/name", "heatmaps_org--name.png"),
        ("cifar10:plain_text", "heatmaps_cifar10-plain_text.png"),
        ("../../etc/passwd", "heatmaps_--..--etc--passwd.png"),
        ("a b\\c", "heatmaps_a-b-c.png"),
    ],
)
def test_heatmap_file_names_are_safe(name, expected):
    assert heatmap_file_name(name) == expected
    assert "/" not in safe_file_name(name) and not safe_file_name(name).startswith(".")
