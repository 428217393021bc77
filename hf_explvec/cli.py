"""The commands of `hf-explvec`, run after [`hf_explvec_cli`] has parsed the arguments.

`main` is re-exported here so that `python -m hf_explvec` and `from hf_explvec.cli import main` keep working.
"""

import logging
import shlex
import sys

from hf_explvec_cli import build_parser, main


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


def _quickstart(args, argv) -> None:
    from .quickstart import format_report, run

    print(format_report(run(args.output_dir, steps=args.steps, lam=args.lam, seed=args.seed), args.lam))


COMMANDS = {"quickstart": _quickstart, "label": lambda args, argv: _label(args), "demo": _run_demo}


def run(args, argv=None) -> None:
    """Run the parsed command `args.command` (`argv`: the raw arguments, recorded in the demo's report)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    COMMANDS[args.command](args, argv)


__all__ = ["build_parser", "main", "run"]
