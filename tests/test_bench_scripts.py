"""Smoke runs of the benchmark scripts at toy sizes (`--tiny`), so that they keep working as the library changes:
scripts/bench_compression.py (issue 12) and scripts/bench_linear_head.py (issue 10, item 8: a thin wrapper over the
demo's linear-head stage, `hf_explvec.demo.linear_head`)."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name: str):
    sys.path.insert(0, str(SCRIPTS))  # bench_linear_head imports bench_compression
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def compression_run(tmp_path_factory):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    folder = tmp_path_factory.mktemp("bench")
    script = load_script("bench_compression")
    arguments = ["--tiny", "--output-dir", str(folder / "work"), "--cache", str(folder / "cache"),
                 "--plot", str(folder / "compression.png"), "--json", str(folder / "rows.json")]  # fmt: skip
    return folder, script.main(arguments)


def by_label(rows, family):
    return {row["label"]: row for row in rows if row["family"] == family}


def test_compression_sizes_and_errors_follow_the_settings(compression_run):
    folder, rows = compression_run
    full = by_label(rows, "full")["full"]
    assert full["ratio"] == 1.0 and full["relative_error"] == pytest.approx(0.0, abs=1e-6)
    for family in ("magnitude", "dare"):
        sparse = by_label(rows, family)
        sizes = [sparse[f"d={d:g}"]["file_bytes"] for d in (0.3, 0.1, 0.03, 0.01)]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] < full["file_bytes"]
        assert all(row["ratio"] > 1 for row in sparse.values())
    magnitude, dare = by_label(rows, "magnitude"), by_label(rows, "dare")
    errors = [magnitude[f"d={d:g}"]["relative_error"] for d in (0.3, 0.1, 0.03, 0.01)]
    assert errors == sorted(errors) and 0 < errors[0] < 1
    # DARE rescales the kept values by 1/density: a larger error than keeping the largest values
    assert all(dare[k]["relative_error"] > magnitude[k]["relative_error"] for k in magnitude)
    low_rank = by_label(rows, "low_rank")
    errors = [low_rank[f"r={r}"]["relative_error"] for r in (16, 8, 4, 2)]
    assert errors == sorted(errors)
    assert low_rank["r=2"]["data_bytes"] < low_rank["r=16"]["data_bytes"] < full["data_bytes"]


def test_compression_measures_every_form_and_writes_the_plot(compression_run):
    folder, rows = compression_run
    families = [row["family"] for row in rows]
    assert families.count("magnitude") == families.count("dare") == 4 and families.count("low_rank") == 4
    assert sum(f == "merge" for f in families) >= 4  # τ_S' alone, sum, ties, dare_ties (and own-λ2 rows)
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["e_rmse"]) and row["e_rmse"] > 0
        assert row["file_bytes"] > row["data_bytes"] > 0  # the file holds the data plus a header
    assert (folder / "compression.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((folder / "rows.json").read_text())
    assert len(saved["rows"]) == len(rows) and saved["chosen_lam"] in (0.0, 0.5, 1.0)


def test_compression_rerun_from_the_cache_gives_the_same_figures(compression_run, tmp_path, capsys):
    folder, rows = compression_run
    chosen = json.loads((folder / "rows.json").read_text())["chosen_lam"]
    script = load_script("bench_compression")
    again = script.main(["--tiny", "--no-merge", "--families", "dare", "--dare-seeds", "0,1", "--lam", str(chosen),
                         "--output-dir", str(tmp_path), "--cache", str(folder / "cache"), "--plot", ""])  # fmt: skip
    assert "models loaded from" in capsys.readouterr().out
    assert [row["family"] for row in again] == ["full"] + ["dare"] * 8
    first = {(r["family"], r["label"]): r for r in rows}
    assert again[0]["e_rmse"] == first["full", "full"]["e_rmse"]
    for density in ("0.3", "0.1", "0.03", "0.01"):
        seed0, seed1 = (next(r for r in again if r["label"] == f"d={density} seed {s}") for s in (0, 1))
        assert seed0["e_rmse"] == first["dare", f"d={density}"]["e_rmse"]  # the same draw, the same figures
        assert seed0["file_bytes"] == first["dare", f"d={density}"]["file_bytes"]
        assert seed1["relative_error"] != seed0["relative_error"]  # another draw


def test_linear_head_script_runs_the_sweep(compression_run, capsys):
    folder, _ = compression_run
    script = load_script("bench_linear_head")
    result = script.main(["--tiny", "--cache", str(folder / "cache")])
    printed = capsys.readouterr().out
    assert "models loaded from" in printed
    # embedding- and pixel-masked Kernel SHAP agree (the demo stage's check on θ_base with the text head), and the
    # explaining classifier has the classifier's logits
    assert float(re.search(r"max \|diff\| (\S+)", printed).group(1)) < 1e-4
    assert float(re.search(r"largest logit difference (\S+)", printed).group(1)) == 0.0
    assert "linear probe only" in printed and "(chosen)" in printed
    assert [row["lam"] for row in result["rows"]["test"]] == [0.0, 0.5, 1.0]
    assert result["chosen"] in (0.0, 0.5, 1.0)
    for row in result["rows"]["test"] + [result["probe"]["test"]]:
        assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["e_rmse"])
        assert {"deletion_auc", "insertion_auc", "pointing"} <= set(row)
