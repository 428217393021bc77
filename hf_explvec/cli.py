"""Command line: argument parsing only; the work is done by the library modules."""

import argparse
import logging


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hf-explvec", description="Explainability vectors for CLIP classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quickstart", help="the vector life cycle on tiny models built in code (offline)")
    quick.add_argument("--output-dir", default="outputs/quickstart")
    quick.add_argument("--steps", type=int, default=60, help="training steps of the self-explaining twin")
    quick.add_argument("--lam", type=float, default=0.8, help="scaling of the vector when applied")
    quick.add_argument("--seed", type=int, default=0)
    _add_label_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "quickstart":
        from .quickstart import format_report, run

        print(format_report(run(args.output_dir, steps=args.steps, lam=args.lam, seed=args.seed), args.lam))
    elif args.command == "label":
        _label(args)


if __name__ == "__main__":
    main()
