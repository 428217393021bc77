"""Does the demo's explainability vector, trained with a text head, transfer to a linear-head classifier? (issue 10.8)

A thin wrapper over the demo's opt-in linear-head target ([`hf_explvec.demo.linear_head`], which `hf-explvec demo
--linear-head` runs inside the whole demo): this script reuses `bench_compression.py`'s models (the demo's base CLIP,
the related target and τ_S, built by the demo's own stages, with its `--cache`) and runs only that stage, printing
its tables.

The demo's source vector τ_S is the difference of two `SelfExplainingCLIPVision` twins whose head is the class-prompt
text embeddings. Most fine-tuned CLIP classifiers on the Hub are instead transformers' `CLIPForImageClassification`:
a linear head on the mean of the patch tokens of the last hidden state (before `post_layernorm`), explained by
[`ExplainingCLIPForImageClassification`] as a_{c,i} = W_c·h_i / M. The stage builds the related target
(`digits_on_photos`) as such a classifier on the base's vision tower (a linear probe, then fine-tuning, both with
transformers' `Trainer`), applies τ_S at each λ2 of the demo's grid, chooses λ2 on validation by the demo's rule and
measures what the demo measures, against Kernel SHAP of each model's own logits by pixel masking (checked against the
demo's embedding masking on θ_base with the text head).

    python scripts/bench_linear_head.py --cache /tmp/demo-models   # reuses bench_compression's models if there
    python scripts/bench_linear_head.py --tiny                       # toy sizes, seconds; numbers mean nothing
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_explvec.demo.linear_head import linear_head_stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compression import build_demo_models, demo_config, run_description  # noqa: E402  (the shared demo models)

COLUMNS = (("acc", "accuracy"), ("E-RMSE", "e_rmse"), ("E-RMSE(L2)", "e_rmse_l2"), ("IoU@2", "iou_at_k"),
           ("Spear.", "spearman"), ("point.", "pointing"), ("del.AUC", "deletion_auc"),
           ("ins.AUC", "insertion_auc"), ("SHAP rms", "shap_rms"), ("attr rms", "attribution_rms"))  # fmt: skip


def print_table(named: list[tuple[str, dict]], zero: dict) -> None:
    """One line per model: accuracy, E-RMSE and their changes against `zero`, then the other metrics."""
    print(f"{'model':<24} {'acc':>6} {'ΔAcc':>6} {'E-RMSE':>7} {'ΔE-RMSE':>8} " + " ".join(f"{h:>10}" for h, _ in
          COLUMNS[2:]))  # fmt: skip
    for name, row in named:
        accuracy_change = 100 * (row["accuracy"] - zero["accuracy"])
        change = 100 * (row["e_rmse"] / zero["e_rmse"] - 1)
        rest = " ".join(f"{row.get(key, float('nan')):>10.3f}" for _, key in COLUMNS[2:])
        print(f"{name:<24} {100 * row['accuracy']:>5.1f}% {accuracy_change:>+6.1f} {row['e_rmse']:>7.3f} "
              f"{change:>+7.1f}% {rest}")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="quick_config's toy sizes (a smoke run)")
    parser.add_argument("--output-dir", default=None, help="work folder; a temporary one by default")
    parser.add_argument("--cache", default=None, help="bench_compression's model cache (reused when it matches)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = Path(args.output_dir or scratch)
        config = demo_config(args.tiny, str(output_dir / "demo"))
        print(run_description(config, args.tiny))
        models = build_demo_models(config, cache=args.cache)
        torch.set_num_threads(config.num_threads)
        target = models["target"]
        entry = linear_head_stage(models["clip"], models["tokenizer"], target, models["vector"], config,
                                  output_dir / "linear_head")  # fmt: skip
        check = entry["masking_check"]
        print(f"Kernel SHAP, embedding vs pixel masking on θ_base with the text head ({check['num_images']} test "
              f"images, same seeds): max |diff| {check['max_abs_difference']:.2e} (RMS of the values "
              f"{check['values_rms']:.3f}); explaining classifier vs classifier, largest logit difference "
              f"{entry['max_abs_logit_difference']:.1e}")  # fmt: skip
        rows, chosen = entry["sweep"], entry["chosen_lam"]
        print(f"\nCLIPForImageClassification (linear probe, then fine-tuned) on {target.name}; τ_S from the text-head "
              f"source twins; λ2 chosen on validation: {chosen:g} (lowest E-RMSE within "
              f"{100 * config.max_accuracy_drop:g} points of λ2 = 0)")  # fmt: skip
        for split in ("validation", "test"):
            named = [("linear probe only", entry["probe"][split])]
            named += [(f"θ_T + {r['lam']:g}·τ_S" + (" (chosen)" if r["lam"] == chosen else ""), r) for r in rows[split]]
            print(f"{split} ({len(getattr(target, split))} images); ΔAcc in points and ΔE-RMSE vs θ_T (λ2 = 0)")
            print_table(named, rows[split][0])
        print(f"wall time: {time.perf_counter() - start:.0f} s")
    return {"chosen": chosen, "rows": rows, "probe": entry["probe"]}


if __name__ == "__main__":
    sys.exit(main() and 0)
