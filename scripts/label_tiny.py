"""Label scikit-learn digits with Kernel SHAP for a tiny self-explaining CLIP (offline, CPU, seconds).

    python scripts/label_tiny.py --output_dir outputs/digits-shap --result outputs/digits-shap.json
    accelerate launch --multi_gpu --num_processes 2 scripts/label_tiny.py --output_dir ... --result ...
    (on CPU: ACCELERATE_USE_CPU=1 before `accelerate launch`)

The model is the tiny random CLIP of `hf_explvec.testing` with a 10-class head (the digits), images 32x32 in 8x8
patches (M = 16). `--slow S` sleeps S seconds before each forward call (a forward pre-hook: the model, hence the
provenance and the values, are unchanged), to test that a killed run resumes. The main process writes `--result`:
the number of processes, the run's fingerprint and the labels.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from PIL import Image
from sklearn.datasets import load_digits
from transformers import CLIPImageProcessorPil

from hf_explvec.data import label_dataset
from hf_explvec.modeling import SelfExplainingCLIPVision
from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer

CLASS_NAMES = [str(digit) for digit in range(10)]


def build_model(seed: int = 0) -> SelfExplainingCLIPVision:
    """The tiny random CLIP as a 10-class (digit) self-explaining classifier: 32x32 images, M = 16 patches."""
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=seed), CLASS_NAMES, tokenizer=tiny_clip_tokenizer())


def build_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing to 32x32 (resize the short side, center crop, CLIP mean and std)."""
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_dataset(num_examples: int = 8) -> datasets.Dataset:
    """The first `num_examples` scikit-learn digits as 8x8 grayscale ("L") images with a ClassLabel."""
    digits = load_digits()
    images = [Image.fromarray((digits.images[i] * 15).astype(np.uint8), mode="L") for i in range(num_examples)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    return datasets.Dataset.from_dict(
        {"image": images, "label": digits.target[:num_examples].tolist()},
        features=features,
        info=datasets.DatasetInfo(dataset_name="sklearn-digits", features=features),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="where the shards go")
    parser.add_argument("--result", required=True, help="JSON file written by the main process")
    parser.add_argument("--num_examples", type=int, default=8)
    parser.add_argument("--shard_size", type=int, default=2)
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", type=float, default=0.0, help="seconds to sleep before each forward call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    model = build_model()
    if args.slow:
        model.register_forward_pre_hook(lambda module, inputs: time.sleep(args.slow))
    labelled = label_dataset(
        build_dataset(args.num_examples),
        model,
        build_processor(),
        num_samples=args.num_samples,
        seed=args.seed,
        output_dir=args.output_dir,
        shard_size=args.shard_size,
        show_progress=False,
    )
    state = PartialState()
    if state.is_main_process:
        result = {
            "num_processes": state.num_processes,
            "fingerprint": labelled._fingerprint,
            "shap_values": labelled["shap_values"][:],
            "shap_target": labelled["shap_target"][:],
        }
        Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
