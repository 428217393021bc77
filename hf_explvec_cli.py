"""The `hf-explvec` command line: parses its arguments, then imports the library for the chosen command only.

This module sits outside the `hf_explvec` package on purpose. `import hf_explvec` registers the model with
transformers' Auto classes, which imports torch and transformers (seconds); keeping the parser outside the package lets
`hf-explvec --help` and argument errors answer at once. The commands themselves are in [`hf_explvec.cli`].

Errors: a usage error (bad or missing argument, or a value the library refuses: `ValueError`, `TypeError`,
`KeyError`) prints one line `hf-explvec: error: ...` and exits 2; any other failure (a model or data set that cannot
be loaded, a Hub connection that drops) prints one line and exits 1. `--debug` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys

PROG = "hf-explvec"
USAGE_ERRORS = (ValueError, TypeError, KeyError)


def _baseline(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # "mean", "blur": checked by the library


def _add_label_parser(commands, common) -> None:
    label = commands.add_parser(
        "label",
        parents=[common],
        help="add Kernel SHAP patch values to a data set split (resumable; splits work under accelerate launch)",
    )
    label.add_argument("--model", required=True, help="a SelfExplainingCLIPVision: Hub repo id or local folder")
    label.add_argument("--model-revision", default=None)
    label.add_argument("--dataset", required=True, help="data set name or path for datasets.load_dataset")
    label.add_argument("--dataset-revision", default=None)
    label.add_argument("--split", default="train")
    label.add_argument("--image-column", default="image")
    label.add_argument("--label-column", default="label")
    label.add_argument("--target", choices=["label", "prediction"], default="label")
    label.add_argument("--num-samples", type=int, default=500)
    label.add_argument("--baseline", type=_baseline, default=0.0, help="a number, 'mean' or 'blur'")
    label.add_argument("--value", choices=["logit", "log_prob", "prob"], default="logit")
    label.add_argument("--seed", type=int, default=0)
    label.add_argument("--batch-size", type=int, default=64)
    label.add_argument("--shard-dir", default=None, help="where finished shards go (resume from there)")
    label.add_argument("--save-to", default=None, help="save the labelled split with save_to_disk")
    label.add_argument("--push-to", default=None, help="push the labelled split (and its card) to this repo")
    label.add_argument("--device", default=None)


def _add_demo_parser(commands, common) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="the paper's pipeline end to end on small CLIP models and offline domains; writes a report folder",
        description="Base stage, source twins and explainability vector, Hub round trip, transfer to related and "
        "unrelated targets with a λ sweep chosen on validation, report (tables, heatmaps, λ-sweep plot, results.json). "
        "Reference scale (internet and a GPU): --clip openai/clip-vit-base-patch32 --base-dataset none "
        "--source-dataset NAME --target-dataset NAME ... (Hub data sets; see README).",
    )
    demo.add_argument("--output-dir", default=None, help="report folder (default reports/demo, or reports/demo-quick)")
    demo.add_argument("--quick", action="store_true", help="toy sizes: the whole pipeline in well under a minute")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    demo.add_argument("--clip", default=None, help="a pretrained CLIPModel name or path; skips the base stage")
    demo.add_argument("--base-dataset", default=None, help="base-stage domain, or 'none' (default: base)")
    demo.add_argument("--source-dataset", default=None, help="source domain or Hub data set ('name' or 'name:config')")
    demo.add_argument("--target-dataset", action="append", default=None, help="a target (repeat for several)")
    demo.add_argument("--image-column", default=None, help="image column of Hub data sets (default: first Image)")
    demo.add_argument("--label-column", default=None, help="label column (default: label, else first ClassLabel)")
    demo.add_argument("--lambdas", type=float, nargs="+", default=None, help="the λ2 grid (must include 0)")
    demo.add_argument("--alpha", type=float, default=None, help="CE weight of the self-explaining models (0.8)")
    demo.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    demo.add_argument("--learning-rate", type=float, default=None, help="fine-tuning learning rate")
    demo.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch size")
    demo.add_argument("--pretrain-steps", type=int, default=None, help="base-stage steps (0: none)")
    demo.add_argument("--train-size", type=int, default=None)
    demo.add_argument("--validation-size", type=int, default=None)
    demo.add_argument("--test-size", type=int, default=None)
    demo.add_argument("--label-samples", type=int, default=None, help="Kernel SHAP samples of the training labels")
    demo.add_argument("--eval-samples", type=int, default=None, help="Kernel SHAP samples of the evaluation reference")
    demo.add_argument(
        "--linear-head",
        action="store_true",
        help="also build the related target as a transformers CLIPForImageClassification on the base's vision tower "
        "(linear probe, then fine-tuning) and measure whether τ_S, trained with the text head, transfers to it "
        "(results.json 'linear_head', a report section); costs a few extra minutes (about 4-5 on 2 CPU cores), "
        "the other figures are unchanged",
    )
    demo.add_argument(
        "--seeds",
        type=_at_least_one,
        default=1,
        help="run the whole demo once per seed (--seed, --seed + 1, ...) on the default targets and the near target "
        "digits_on_photos, and report the mean and spread of every figure over the seeds (about 16 min per seed on 2 "
        "CPU cores)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _at_least_one(text: str) -> int:
    """`--seeds`: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _lam(text: str):
    """`--lam`: a number, or `auto` (chosen on `--validation-images`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


_MODEL_HELP = (
    "your classifier: a Hub repo id or local folder of a CLIPForImageClassification (or of a CLIPModel, with "
    "--class-names for zero-shot, or a self-explaining model)"
)
_VECTOR_HELP = "the explainability vector: a Hub repo id or a local folder saved by TaskVector.save_pretrained"


def _add_vector_options(parser) -> None:
    """The options `explain` and `apply` share: which model, which vector, which λ, the base check."""
    parser.add_argument("--model", required=True, help=_MODEL_HELP)
    parser.add_argument("--model-revision", default=None, help="branch, tag or commit of --model (default: main)")
    parser.add_argument("--vector", required=True, help=_VECTOR_HELP)
    parser.add_argument("--revision", default=None, help="branch, tag or commit of --vector (default: main)")
    parser.add_argument(
        "--class-names",
        default=None,
        help="comma-separated class names: explain a zero-shot CLIPModel with these classes (its text head)",
    )
    parser.add_argument(
        "--no-base-check",
        action="store_true",
        help="apply the vector even if --model does not descend from the vector's base model (not advised)",
    )


def _add_explain_parser(commands, common) -> None:
    explain = commands.add_parser(
        "explain",
        parents=[common],
        help="explain images with your classifier plus an explainability vector: JSON and one overlay PNG per image",
        description="Load --model and --vector by name, add λ·vector to the model, and explain each IMAGE: the "
        "predicted class, its probability and the patch attribution grid. Writes OUTPUT_DIR/explanations.json (a "
        'list with one entry per image: {"image": path, "label": predicted class name, "score": its probability, '
        '"attributions": the g×g grid, row-major, "overlay": the PNG}) and one overlay PNG per image.',
        epilog="λ: --lam X uses X; without --lam the vector's recommended_lam is used (an error if it has none). "
        "--lam auto sweeps λ on your validation images (--validation-images, required with auto) with choose_lam: "
        "give a folder with one subfolder per class, named as the model's classes (DIR/cat/1.png, DIR/dog/2.png), "
        "and λ is the one with the lowest explanation error whose accuracy stays within --max-accuracy-drop of λ=0; "
        "give a folder of images without class subfolders, or a glob ('val/*.jpg'), and prediction agreement with λ=0 "
        "replaces accuracy. The explanation error is measured against Kernel SHAP on those images (cost: "
        "--kernel-shap-samples forward passes per image and λ).",
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    _add_vector_options(explain)
    explain.add_argument("--lam", type=_lam, default=None, help="λ: a number, or 'auto' (see below)")
    explain.add_argument("--output-dir", default="explanations", help="where to write (default: ./explanations)")
    explain.add_argument(
        "--validation-images",
        default=None,
        metavar="DIR_OR_GLOB",
        help="with --lam auto: a folder (class subfolders give labels) or a glob of validation images",
    )
    explain.add_argument(
        "--lambdas", type=float, nargs="+", default=None, help="with --lam auto: the λ grid to sweep (must include 0)"
    )
    explain.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        help="with --lam auto: the accuracy (or agreement) drop allowed from λ=0 (default 0.04)",
    )
    explain.add_argument(
        "--kernel-shap-samples",
        type=int,
        default=None,
        help="with --lam auto: Kernel SHAP coalitions per image and λ, the reference (default 500, unlabeled 250)",
    )
    explain.add_argument("--device", default=None, help="torch device (default: cpu)")


def _add_apply_parser(commands, common) -> None:
    apply = commands.add_parser(
        "apply",
        parents=[common],
        help="add an explainability vector to your classifier and save or push the explained model",
        description="Load --model and --vector by name, add λ·vector (default λ: the vector's recommended_lam), and "
        "save the explained model to a folder or push it to the Hub, with its image processor and a card that "
        "records the model, the vector (id and revision) and λ. It loads back with AutoModel, "
        'AutoModelForImageClassification and pipeline("image-classification") after `import hf_explvec`.',
    )
    _add_vector_options(apply)
    apply.add_argument("--lam", type=float, default=None, help="λ (default: the vector's recommended_lam)")
    target = apply.add_mutually_exclusive_group(required=True)
    target.add_argument("--save-to", default=None, metavar="DIR", help="save the explained model to this folder")
    target.add_argument("--push-to", default=None, metavar="REPO", help="push the explained model to this repo")
    apply.add_argument("--private", action="store_true", help="with --push-to: create the repo private")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hf-explvec` (no heavy imports)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser = argparse.ArgumentParser(
        prog=PROG, description="Explainability vectors for CLIP classifiers.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser(
        "quickstart", help="the vector life cycle on tiny models built in code (offline)", parents=[common]
    )
    quick.add_argument("--output-dir", default="outputs/quickstart")
    quick.add_argument("--steps", type=int, default=60, help="training steps of the self-explaining twin")
    quick.add_argument("--lam", type=float, default=0.8, help="scaling of the vector when applied")
    quick.add_argument("--seed", type=int, default=0)
    _add_label_parser(commands, common)
    _add_demo_parser(commands, common)
    _add_explain_parser(commands, common)
    _add_apply_parser(commands, common)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


def main(argv: list[str] | None = None) -> None:
    """Run `hf-explvec` with `argv` (default `sys.argv[1:]`). Raises `SystemExit` (2: usage error, 1: failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from hf_explvec import cli

        cli.run(args, argv)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:
        if args.debug:
            raise
        usage = isinstance(error, USAGE_ERRORS) and not isinstance(error, OSError)
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2 if usage else 1) from None


if __name__ == "__main__":
    main()
