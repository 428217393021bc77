"""The distribution ships every subpackage, the card templates and the evaluate modules."""

import tomllib
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "hf_explvec").rglob("__init__.py")} | {
        "hf_explvec.hub_cards"
    }
    assert found == listed


def test_card_templates_and_metrics_are_package_data():
    cards = files("hf_explvec.hub_cards")
    for name in ("task_vector", "self_explaining_model", "shap_dataset"):
        assert cards.joinpath(f"{name}.md").is_file()
    metrics = files("hf_explvec.evaluation").joinpath("metrics")
    assert metrics.joinpath("e_rmse", "e_rmse.py").is_file()
