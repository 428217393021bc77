"""Train a tiny self-explaining CLIP on a synthetic SHAP-labelled data set built in code (offline, CPU, seconds).

    python scripts/train_tiny.py --output_dir outputs/tiny --max_steps 20
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train_tiny.py --output_dir outputs/tiny

(On CPU, `accelerate launch --cpu --num_processes 2` starts a single process; the line above starts two, on gloo.)

The task: 32x32 images of noise where class c (of 4) is the column of the grid holding one bright 8x8 patch; the
"SHAP values" are the patch's brightness excess at that patch and zero elsewhere (analytic, no Kernel SHAP run).
The main process writes `run_info.json` (number of processes, steps, history) beside the saved model.
"""

import argparse
import json
import logging
from pathlib import Path

import datasets
import torch
from accelerate import PartialState

from hf_explvec.modeling import SelfExplainingCLIPVision
from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer
from hf_explvec.training import TrainingConfig, train

CLASS_NAMES = ["left", "middle-left", "middle-right", "right"]


def build_model(seed: int = 0) -> SelfExplainingCLIPVision:
    """The tiny random CLIP of `hf_explvec.testing` as a 4-class self-explaining classifier (M = 16 patches)."""
    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=seed), CLASS_NAMES, tokenizer=tiny_clip_tokenizer())
    model.config.clip_name_or_path = "hf_explvec.testing.tiny_clip_model"
    return model


def build_dataset(num_examples: int = 64, seed: int = 0) -> datasets.Dataset:
    """`pixel_values` (3, 32, 32), `labels` in [0, 4) and `shap_values` (16,) for the bright-column task."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(num_examples, 3, 32, 32, generator=generator) * 0.5
    labels = torch.randint(0, 4, (num_examples,), generator=generator)
    rows = torch.randint(0, 4, (num_examples,), generator=generator)
    boost = 1.0 + torch.rand(num_examples, generator=generator)
    shap = torch.zeros(num_examples, 4, 4)
    for i in range(num_examples):
        r, c = int(rows[i]), int(labels[i])
        images[i, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += boost[i]
        shap[i, r, c] = boost[i]
    features = datasets.Features(
        {
            "pixel_values": datasets.Array3D((3, 32, 32), "float32"),
            "labels": datasets.ClassLabel(names=CLASS_NAMES),
            "shap_values": datasets.List(datasets.Value("float32"), length=16),
        }
    )
    data = {"pixel_values": images.numpy(), "labels": labels.tolist(), "shap_values": shap.flatten(1).numpy()}
    return datasets.Dataset.from_dict(data, info=datasets.DatasetInfo(dataset_name="toy-columns", features=features))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--per_device_batch_size", type=int, default=8)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--checkpoint_every", type=int, default=None)
    parser.add_argument("--resume_from", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = TrainingConfig(
        output_dir=args.output_dir,
        alpha=args.alpha,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        per_device_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every,
        resume_from=args.resume_from,
        seed=args.seed,
        log_every=1,
        disable_tqdm=True,
    )
    result = train(build_model(args.seed), build_dataset(args.num_examples, args.seed), config)
    state = PartialState()
    if state.is_main_process:
        info = {"num_processes": state.num_processes, "global_step": result.global_step, "history": result.history}
        (Path(args.output_dir) / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
