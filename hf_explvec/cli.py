"""Command line: argument parsing only; the work is done by the library modules."""

import argparse
import logging
import shlex
import sys


def _baseline(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # "mean", "blur": checked by the library


def _add_label_parser(commands) -> None:
    label = commands.add_parser(
        "label",
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


def _label(args) -> None:
    from .data import image_processor_for, label_dataset, load_split, push_shap_dataset
    from .modeling import SelfExplainingCLIPVision

    model = SelfExplainingCLIPVision.from_pretrained(args.model, revision=args.model_revision)
    processor = image_processor_for(model, args.model, revision=args.model_revision)
    split = load_split(args.dataset, args.split, revision=args.dataset_revision)
    labelled = label_dataset(
        split,
        model.to(args.device) if args.device else model,
        processor,
        image_column=args.image_column,
        label_column=args.label_column,
        target=args.target,
        num_samples=args.num_samples,
        baseline=args.baseline,
        value=args.value,
        seed=args.seed,
        batch_size=args.batch_size,
        model_id=args.model,
        model_revision=args.model_revision,
        output_dir=args.shard_dir,
        device=args.device,
    )
    if args.save_to:
        labelled.save_to_disk(args.save_to)
    if args.push_to:
        push_shap_dataset(labelled, args.push_to, split=args.split)
    print(f"labelled {len(labelled)} examples of {args.dataset}[{args.split}] with {args.num_samples} samples each")


def _add_demo_parser(commands) -> None:
    demo = commands.add_parser(
        "demo",
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
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")


_DEMO_OPTIONS = {  # argparse name -> DemoConfig field
    "seed": "seed", "threads": "num_threads", "clip": "clip", "source_dataset": "source", "target_dataset": "targets",
    "image_column": "image_column", "label_column": "label_column", "lambdas": "lambdas", "alpha": "alpha",
    "epochs": "num_train_epochs", "learning_rate": "learning_rate", "batch_size": "batch_size",
    "pretrain_steps": "pretrain_steps", "train_size": "train_size", "validation_size": "validation_size",
    "test_size": "test_size", "label_samples": "label_num_samples", "eval_samples": "eval_num_samples",
}  # fmt: skip


def _run_demo(args, argv) -> None:
    from .demo import DemoConfig, quick_config, run
    from .demo.report import format_summary

    overrides = {field: getattr(args, name) for name, field in _DEMO_OPTIONS.items() if getattr(args, name) is not None}
    if args.base_dataset is not None:
        overrides["base"] = None if args.base_dataset.lower() == "none" else args.base_dataset
    if args.clip is not None and "base" not in overrides:
        overrides["base"] = None  # a pretrained CLIP is the base
    overrides["show_progress"] = not args.no_progress
    overrides["command"] = "hf-explvec " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    config = quick_config(**overrides) if args.quick else DemoConfig(**overrides)
    print(format_summary(run(config)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hf-explvec", description="Explainability vectors for CLIP classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quickstart", help="the vector life cycle on tiny models built in code (offline)")
    quick.add_argument("--output-dir", default="outputs/quickstart")
    quick.add_argument("--steps", type=int, default=60, help="training steps of the self-explaining twin")
    quick.add_argument("--lam", type=float, default=0.8, help="scaling of the vector when applied")
    quick.add_argument("--seed", type=int, default=0)
    _add_label_parser(commands)
    _add_demo_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "quickstart":
        from .quickstart import format_report, run

        print(format_report(run(args.output_dir, steps=args.steps, lam=args.lam, seed=args.seed), args.lam))
    elif args.command == "label":
        _label(args)
    elif args.command == "demo":
        _run_demo(args, argv)


if __name__ == "__main__":
    main()
