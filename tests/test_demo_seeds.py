"""The demo's evidence over seeds and targets: the share of the gap closed, the multi-seed aggregate and report
(`hf-explvec demo --seeds N`), and the diagnostic's correlation with the realised gain."""

import copy
import json

import pytest
from test_demo import synthetic_target

import hf_explvec_cli
from hf_explvec.demo import DemoConfig, aggregate_runs, quick_config, run_seeds
from hf_explvec.demo.diagnostics import diagnostic_correlations, diagnostic_points, diagnostic_section
from hf_explvec.demo.report import lambda_rule_text, transfer_summary
from hf_explvec.demo.seeds import build_seeds_report


def summarised(target, probe=None):
    target = copy.deepcopy(target)
    if probe is not None:
        target["probe"] = {"relative_change_e_rmse_l2": probe, "num_images": 4, "num_samples": 64}
    target["summary"] = transfer_summary(target)
    return target


def test_transfer_summary_gives_the_share_of_the_gap_to_the_target_trained_model_that_the_vector_closes():
    summary = transfer_summary(synthetic_target())  # test E-RMSE 2.0 -> 1.6 with the vector, 0.4 trained on target
    assert summary["gap_closed"] == pytest.approx(0.4 / 1.6)
    assert summary["gap_closed_l2"] == pytest.approx(0.25)  # E-RMSE (L2) is 0.15 x E-RMSE in synthetic_target
    assert transfer_summary(synthetic_target(chosen=0.0))["gap_closed"] == 0.0
    worse_direct = synthetic_target()
    worse_direct["direct"]["test"]["e_rmse"] = 3.0  # the target-trained model is not better: no gap to close
    assert transfer_summary(worse_direct)["gap_closed"] is None


def fake_run(seed, changes, probes):
    """A run's results with one synthetic target per (test E-RMSE at λ2 = 0.5, probe), seed `seed`."""
    targets = []
    for index, (e_rmse, probe) in enumerate(zip(changes, probes, strict=True)):
        target = synthetic_target(role="related" if index else "unrelated", chosen=0.5)
        target["domain"] = f"t{index}"
        target["sweep"]["test"][1]["e_rmse"] = e_rmse
        target["sweep"]["test"][1]["e_rmse_l2"] = 0.15 * e_rmse
        targets.append(summarised(target, probe))
    return {"config": {**quick_config().to_dict(), "seed": seed}, "targets": targets, "timings_seconds": {"total": 1}}


def test_aggregate_runs_mean_spread_counts_and_validation_test_gap():
    runs = [fake_run(0, [1.6, 1.8, 2.2], [-0.2, -0.1, 0.1]), fake_run(1, [1.2, 1.8, 2.4], [-0.3, -0.1, 0.2])]
    aggregate = aggregate_runs(runs)
    first = aggregate["targets"]["t0"]
    assert first["num_runs"] == 2 and first["lams"] == [0.5, 0.5] and first["role"] == "unrelated"
    assert first["relative_e_rmse"]["mean"] == pytest.approx(-0.3)  # -20% and -40%
    assert first["relative_e_rmse"]["std"] == pytest.approx(0.1414213, rel=1e-6)
    assert (first["relative_e_rmse"]["min"], first["relative_e_rmse"]["max"]) == pytest.approx((-0.4, -0.2))
    # validation: -20% E-RMSE (L2) in both; test -20% and -40%: the rule was 0 and 20 points pessimistic
    assert first["optimism_relative_e_rmse_l2"]["mean"] == pytest.approx(-0.1)
    assert first["optimism_accuracy_change"]["mean"] == pytest.approx(0.0)
    assert first["gap_closed_l2"]["n"] == 2
    assert aggregate["targets"]["t2"]["works"] == 0  # E-RMSE rose at the chosen λ2
    assert aggregate["targets"]["t1"]["meets_goal"] == 2 and aggregate["targets"]["t2"]["meets_goal"] == 0
    points = aggregate["diagnostic"]["points"]
    assert len(points) == 6 and {p["seed"] for p in points} == {0, 1}
    probe = aggregate["diagnostic"]["correlations"]["probe"]
    assert probe["n"] == 6 and probe["pearson"]["estimate"] > 0.9  # the probes were built to track the gain
    assert aggregate["diagnostic"]["correlations"]["cosine"]["reason"] == "one side is constant"
    means = aggregate["diagnostic"]["per_target_means"]
    assert [m["domain"] for m in means] == ["t0", "t1", "t2"] and means[0]["probe"] == pytest.approx(-0.25)
    assert aggregate["diagnostic"]["correlations_per_target"]["probe"]["n"] == 3


def test_the_rules_optimism_counts_only_seeds_that_applied_a_vector_and_the_goal_needs_a_working_transfer():
    kept = fake_run(1, [1.6], [0.0])
    kept["targets"][0] = summarised({**kept["targets"][0], "chosen_lam": 0.0})
    aggregate = aggregate_runs([fake_run(0, [1.6], [0.0]), kept])
    entry = aggregate["targets"]["t0"]
    assert entry["lams"] == [0.5, 0.0] and entry["optimism_relative_e_rmse_l2"]["n"] == 1
    assert entry["relative_e_rmse"]["n"] == 2  # a seed that keeps λ2 = 0 counts as no change
    failing = fake_run(0, [1.6, 1.6], [0.0, 0.0])
    failing["targets"][1]["sweep"]["test"][1]["insertion_auc"] = 0.1  # E-RMSE -20%, but insertion got worse
    failing["targets"][1] = summarised(failing["targets"][1])
    assert failing["targets"][1]["summary"]["meets_related_goal"] and not failing["targets"][1]["summary"]["works"]
    assert aggregate_runs([failing])["targets"]["t1"]["meets_goal"] == 0


def test_aggregate_runs_refuses_runs_with_other_targets_and_no_runs():
    with pytest.raises(ValueError, match="at least one run"):
        aggregate_runs([])
    other = fake_run(1, [1.6, 1.8], [0.0, 0.1])
    with pytest.raises(ValueError, match="different targets"):
        aggregate_runs([fake_run(0, [1.6, 1.8, 2.2], [0.0, 0.1, 0.2]), other])


def test_seeds_report_states_the_rule_the_counts_and_the_spread():
    runs = [fake_run(0, [1.6, 1.8, 2.2], [-0.2, -0.1, 0.1]), fake_run(1, [1.2, 1.8, 2.4], [-0.3, -0.1, 0.2])]
    results = {"config": runs[0]["config"], "num_seeds": 2, "runs": runs, "aggregate": aggregate_runs(runs),
               "date": "today", "machine": "here", "wall_seconds": 2.0}  # fmt: skip
    report = build_seeds_report(results)
    assert "# hf-explvec demo over 2 seeds" in report and "- Seeds: 0, 1" in report
    assert lambda_rule_text(runs[0]["config"]) in report
    assert "| t0 | unrelated | 0.5, 0.5 | 2/2 | – (not a related target) | 2/2 |" in report
    assert "| t2 | related | 0.5, 0.5 | 0/2 | 0/2 | 0/2 |" in report
    assert "-30.0 ± 14.1% (-40.0 to -20.0)" in report
    assert "Over the per-target means (one point per target" in report
    assert "probe ΔE-RMSE (L2): Pearson r = " in report and "n = 6" in report


def test_lambda_rule_text_reads_the_runs_settings():
    text = lambda_rule_text(DemoConfig().to_dict())
    assert "lowest validation E-RMSE (L2)" in text and "90% upper confidence bound" in text and "4 points" in text
    older = lambda_rule_text({"max_accuracy_drop": 0.04})  # results written before the rule's settings existed
    assert "lowest validation E-RMSE among" in older and "whose validation accuracy drop" in older


def test_diagnostic_points_and_section_from_one_run():
    run = fake_run(0, [1.6, 1.8, 2.2], [-0.2, -0.1, 0.1])
    kept = summarised(synthetic_target(chosen=0.0), probe=0.05)
    points = diagnostic_points([*run["targets"], kept], seed=3)
    assert [p["realised"] for p in points][-1] == 0.0  # λ2 = 0 kept: nothing realised
    assert points[0]["probe"] == -0.2 and points[0]["cosine"] == 0.125 and points[0]["seed"] == 3
    correlations = diagnostic_correlations(points[:2])
    assert correlations["probe"] == {"n": 2, "reason": "fewer than 3 targets"}
    lines = diagnostic_section(points, diagnostic_correlations(points), quick_config().to_dict())
    text = "\n".join(lines)
    assert "## Diagnostic" in text and "first 4 validation images with Kernel SHAP N = 64" in text
    assert "| t0 | unrelated | 3 | -20.0% | +0.125 | 0.5 | -20.0% | yes |" in text


def test_run_seeds_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="num_seeds"):
        run_seeds(quick_config(str(tmp_path)), 0)
    with pytest.raises(TypeError, match="DemoConfig"):
        run_seeds({"seed": 0}, 2)


def test_cli_refuses_a_seed_count_below_one(capsys):
    with pytest.raises(SystemExit) as error:
        hf_explvec_cli.main(["demo", "--quick", "--seeds", "0"])
    assert error.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_run_seeds_runs_the_whole_demo_per_seed_and_writes_the_aggregate(tmp_path):
    config = quick_config(str(tmp_path / "seeds"), show_progress=False, targets=("letters_on_photos",),
                          train_size=24, validation_size=12, test_size=12, num_train_epochs=1)  # fmt: skip
    results = run_seeds(config, 2)
    assert [run["config"]["seed"] for run in results["runs"]] == [0, 1]
    for seed in (0, 1):
        assert (tmp_path / "seeds" / f"seed-{seed}" / "report.md").exists()
    saved = json.loads((tmp_path / "seeds" / "results.json").read_text())
    entry = saved["aggregate"]["targets"]["letters_on_photos"]
    assert entry["num_runs"] == 2 and len(entry["lams"]) == 2 and entry["role"] == "related"
    assert len(saved["aggregate"]["diagnostic"]["points"]) == 2
    first, second = (run["targets"][0]["sweep"]["validation"] for run in results["runs"])
    assert [e["e_rmse"] for e in first] != [e["e_rmse"] for e in second]  # the seeds change the data and models
    assert "# hf-explvec demo over 2 seeds" in (tmp_path / "seeds" / "report.md").read_text()
