"""The commands of `hf-explvec`, run after [`hf_explvec_cli`] has parsed the arguments.

`main` is re-exported here so that `python -m hf_explvec` and `from hf_explvec.cli import main` keep working.
"""

import contextlib
import logging
import shlex
import sys
from pathlib import Path

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


def _class_names(args) -> list[str] | None:
    if args.class_names is None:
        return None
    names = [name.strip() for name in args.class_names.split(",")]
    if not all(names):
        raise ValueError(f"--class-names must be comma-separated non-empty names, got {args.class_names!r}.")
    return names


def _load_for_vector(args):
    """The explaining model (no vector yet) and the vector, from the names on the command line."""
    from .explained_model import load_explaining_model
    from .task_vector import TaskVector

    vector = TaskVector.from_pretrained(args.vector, revision=args.revision)  # first: small, and fails fast
    model = load_explaining_model(args.model, revision=args.model_revision, class_names=_class_names(args))
    if getattr(args, "device", None):
        model = model.to(args.device)
    return model, vector


@contextlib.contextmanager
def _base_check_worded_for_cli():
    """A base mismatch names the command line's override (`--no-base-check`), not the keyword argument."""
    from .base_check import BaseModelMismatchError

    try:
        yield
    except BaseModelMismatchError as error:
        error.args = (str(error).replace("check_base=False", "--no-base-check"),)
        raise


def _apply(model, vector, args, lam) -> None:
    from .explained_model import apply_vector

    with _base_check_worded_for_cli():
        apply_vector(model, vector, lam, check_base=not args.no_base_check)


def _validation_split(pattern: str, model):
    r"""The validation images of `--lam auto` as a `datasets.Dataset`: a folder with one subfolder per class
    (`imagefolder`, labels mapped to the model's class ids by name), else a folder of images or a glob (no labels)."""
    import glob
    import os

    import datasets

    if os.path.isdir(pattern):
        subfolders = sorted(e.name for e in os.scandir(pattern) if e.is_dir() and not e.name.startswith("."))
        if subfolders:
            label2id = {str(name): int(i) for name, i in model.config.label2id.items()}
            unknown = [name for name in subfolders if name not in label2id]
            if unknown:
                raise ValueError(
                    f"--validation-images {pattern}: subfolders {unknown} are not classes of the model "
                    f"({sorted(label2id, key=label2id.get)}); name each subfolder after a class."
                )
            split = datasets.load_dataset("imagefolder", data_dir=pattern, split="train", drop_labels=False)
            folder_names = split.features["label"].names
            ids = [label2id[folder_names[i]] for i in split["label"]]
            return split.remove_columns("label").add_column("label", ids)
        files = sorted(str(path) for path in Path(pattern).iterdir() if path.is_file())
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"--validation-images {pattern!r}: no image files found.")
    return datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())


def _explain(args) -> None:
    import json

    from .explain import explain, save_overlays
    from .lam import choose_lam

    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"image file not found: {missing[0]}{more}")
    if (args.lam == "auto") != (args.validation_images is not None):
        raise ValueError("--lam auto needs --validation-images (and --validation-images is only used by --lam auto).")
    model, vector = _load_for_vector(args)
    lam = args.lam
    if lam == "auto":
        split = _validation_split(args.validation_images, model)
        options = {
            "lams": args.lambdas,
            "max_accuracy_drop": args.max_accuracy_drop,
            "kernel_shap_samples": args.kernel_shap_samples,
        }
        options = {key: value for key, value in options.items() if value is not None}
        with _base_check_worded_for_cli():  # a foreign base is refused before anything is measured
            result = choose_lam(model, vector, split, check_base=not args.no_base_check, **options)
        lam = result.lam
        print(result)  # the table, the rule and the cost
        print(f"chosen λ = {lam:g}")
    _apply(model, vector, args, lam)
    explanations = explain(model, list(args.images))
    output_dir = Path(args.output_dir)
    overlays = save_overlays(explanations, None, output_dir)
    entries = []
    for path, explanation, overlay in zip(args.images, explanations, overlays, strict=True):
        entry = explanation.to_dict()
        entry.update(image=str(path), overlay=str(overlay))
        entries.append(entry)
    (output_dir / "explanations.json").write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    record = model.config.explainability
    print(f"explained {len(entries)} images with {args.model} + {record['lam']:g} × {args.vector}")
    for entry in entries:
        print(f"  {entry['image']}: {entry['label']} ({entry['score']:.1%}) -> {entry['overlay']}")
    print(f"wrote {output_dir / 'explanations.json'}")


def _apply_command(args) -> None:
    model, vector = _load_for_vector(args)
    _apply(model, vector, args, args.lam)
    record = model.config.explainability
    what = f"{args.model} + {record['lam']:g} × {args.vector}"
    if args.save_to:
        folder = Path(args.save_to)
        model.save_pretrained(folder)  # with the image processor saved with --model (else CLIP's)
        if not (folder / "README.md").exists():
            model.generate_model_card().save(folder / "README.md")
        print(f"saved the explained model ({what}) to {folder}")
    else:
        commit = model.push_to_hub(args.push_to, private=args.private or None)
        print(f"pushed the explained model ({what}) to {args.push_to} at {commit.oid}")


_DEMO_OPTIONS = {  # argparse name -> DemoConfig field
    "seed": "seed", "threads": "num_threads", "clip": "clip", "source_dataset": "source", "target_dataset": "targets",
    "image_column": "image_column", "label_column": "label_column", "lambdas": "lambdas", "alpha": "alpha",
    "epochs": "num_train_epochs", "learning_rate": "learning_rate", "batch_size": "batch_size",
    "pretrain_steps": "pretrain_steps", "train_size": "train_size", "validation_size": "validation_size",
    "test_size": "test_size", "label_samples": "label_num_samples", "eval_samples": "eval_num_samples",
}  # fmt: skip


def _run_demo(args, argv) -> None:
    from .demo import SEEDS_TARGETS, DemoConfig, quick_config, run, run_seeds
    from .demo.report import format_summary

    overrides = {field: getattr(args, name) for name, field in _DEMO_OPTIONS.items() if getattr(args, name) is not None}
    if args.base_dataset is not None:
        overrides["base"] = None if args.base_dataset.lower() == "none" else args.base_dataset
    if args.clip is not None and "base" not in overrides:
        overrides["base"] = None  # a pretrained CLIP is the base
    overrides["show_progress"] = not args.no_progress
    if args.linear_head:
        overrides["linear_head_target"] = True
    overrides["command"] = "hf-explvec " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    if args.seeds > 1 and "targets" not in overrides:
        overrides["targets"] = SEEDS_TARGETS
    config = quick_config(**overrides) if args.quick else DemoConfig(**overrides)
    if args.seeds == 1:
        print(format_summary(run(config)))
        return
    results = run_seeds(config, args.seeds)
    print(f"report: {results['report']}")
    for name, entry in results["aggregate"]["targets"].items():
        figure = entry["relative_e_rmse"]
        mean = "–" if figure["mean"] is None else f"{100 * figure['mean']:+.1f}% ± {100 * figure['std']:.1f}"
        print(
            f"{name} ({entry['role']}): λ2 {', '.join(f'{lam:g}' for lam in entry['lams'])}; test E-RMSE {mean}; "
            f"transfer works in {entry['works']}/{entry['num_runs']} seeds"
        )
    print(f"wall time: {results['wall_seconds']:.1f} s")


def _quickstart(args, argv) -> None:
    from .quickstart import format_report, run

    print(format_report(run(args.output_dir, steps=args.steps, lam=args.lam, seed=args.seed), args.lam))


COMMANDS = {
    "quickstart": _quickstart,
    "label": lambda args, argv: _label(args),
    "demo": _run_demo,
    "explain": lambda args, argv: _explain(args),
    "apply": lambda args, argv: _apply_command(args),
}


def run(args, argv=None) -> None:
    """Run the parsed command `args.command` (`argv`: the raw arguments, recorded in the demo's report)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    COMMANDS[args.command](args, argv)


__all__ = ["build_parser", "main", "run"]
