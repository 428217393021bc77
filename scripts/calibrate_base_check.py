"""Measure `hf_explvec.base_check.base_distance` on honest fine-tunes and on foreign pretrainings of the tiny CLIP
(offline, CPU, about a minute), to calibrate `DEFAULT_THRESHOLD`.

    python scripts/calibrate_base_check.py [--steps 500] [--pretrain_steps 100] [--sections null training]

Bases: the random tiny CLIP of `hf_explvec.testing.tiny_clip_model(seed)`, and the same after the demo's base stage
(`hf_explvec.demo.pretrain.pretrain_clip`, CLIP cross-entropy over class prompts on the demo's `base` domain).
Fine-tunes: a `CLIPForImageClassification` (the vision tower of the base plus a linear head, all weights trained)
with plain AdamW (weight decay 0.01) on the demo's `digits_on_textures` domain, with true or shuffled labels, at
several learning rates; and `hf_explvec.training.train` (self-explaining, α = 0.8) on the toy columns task.
Each line prints the correlation distance to the start's fingerprint and, for comparison, the relative L2 distance
of the full weights (tensors with at least 2 dimensions). The `null` section measures the distance between unrelated
initialisations (every ordered pair of `tiny_clip_model(seed)`, seeds 0 to 11).
"""

import argparse
import copy
import importlib.util
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPForImageClassification, CLIPImageProcessor

from hf_explvec.arithmetic import vision_state
from hf_explvec.base_check import DEFAULT_THRESHOLD, base_distance, base_fingerprint
from hf_explvec.demo.config import DemoConfig
from hf_explvec.demo.data import process_split
from hf_explvec.demo.domains import DOMAINS, build_domain
from hf_explvec.demo.pretrain import pretrain_clip
from hf_explvec.modeling import SelfExplainingCLIPVision
from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer
from hf_explvec.training import TrainingConfig, train

_spec = importlib.util.spec_from_file_location("train_tiny", Path(__file__).with_name("train_tiny.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def split(name: str, n: int, seed: int):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return process_split(build_domain(name, "train", n, seed=seed), processor, 32, 8)


def relative_l2(state, start) -> float:
    keys = [k for k in start if start[k].dim() >= 2 and k in state]
    num = math.fsum(float((state[k].double() - start[k].double()).pow(2).sum()) for k in keys)
    return math.sqrt(num / math.fsum(float(start[k].double().pow(2).sum()) for k in keys))


def report(label: str, model, fingerprint, start) -> None:
    state = vision_state(model.state_dict())
    print(f"{label:<64} distance {base_distance(fingerprint, state):.3f}   rel-L2 {relative_l2(state, start):7.3f}")


def pretrained(seed: int, steps: int, base):
    clip = tiny_clip_model(seed=seed)
    spec = DOMAINS["base"]
    config = DemoConfig(seed=seed, pretrain_steps=steps, pretrain_batch_size=64, pretrain_learning_rate=1e-3)
    pretrain_clip(clip, tiny_clip_tokenizer(), base, list(spec.class_names), list(spec.templates), config)
    return clip


def classifier(clip, num_labels: int) -> CLIPForImageClassification:
    torch.manual_seed(0)
    config = copy.deepcopy(clip.config)
    config.num_labels = num_labels
    model = CLIPForImageClassification(config)
    missing, _ = model.load_state_dict(clip.state_dict(), strict=False)
    assert all(k.startswith("classifier.") for k in missing), missing
    return model


def finetune(clip, data, lr: float, steps: int, shuffled: bool, fingerprint, start, label: str) -> None:
    num_labels = int(data.labels.max()) + 1
    model = classifier(clip, num_labels).train()
    generator = torch.Generator().manual_seed(0)
    labels = data.labels[torch.randperm(len(data), generator=generator)] if shuffled else data.labels
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for step in range(1, steps + 1):
        index = torch.randint(0, len(data), (32,), generator=generator)
        loss = F.cross_entropy(model(pixel_values=data.pixel_values[index]).logits, labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % (steps // 2) == 0:
            report(f"{label} lr {lr:g}{' shuffled' if shuffled else ''} step {step} (loss {float(loss):.2f})",
                   model, fingerprint, start)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--pretrain_steps", type=int, default=100)
    parser.add_argument("--sections", nargs="+", choices=["null", "training"], default=["null", "training"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"DEFAULT_THRESHOLD = {DEFAULT_THRESHOLD}")
    if "null" in args.sections:
        states = {s: vision_state(tiny_clip_model(seed=s).state_dict()) for s in range(12)}
        prints = {s: base_fingerprint(state) for s, state in states.items()}
        null = np.array([base_distance(prints[a], states[b]) for a in states for b in states if a != b])
        print(f"-- unrelated initialisations ({len(null)} ordered pairs of seeds 0-11): distance mean "
              f"{null.mean():.3f}, std {null.std():.4f}, min {null.min():.3f}, max {null.max():.3f}")  # fmt: skip
    if "training" in args.sections:
        training(args)


def training(args) -> None:
    base_data, target = split("base", 512, 0), split("digits_on_textures", 256, 1)

    init = {s: tiny_clip_model(seed=s) for s in (0, 1)}
    pre = {s: pretrained(s, args.pretrain_steps, base_data) for s in (0, 1)}
    states = {name: vision_state(copy.deepcopy(m).state_dict()) for name, m in [*[(f"init{s}", init[s]) for s in init],
                                                                   *[(f"pre{s}", pre[s]) for s in pre]]}  # fmt: skip
    prints = {name: base_fingerprint(state) for name, state in states.items()}

    print("-- honest descendants")
    report(f"pretrained ({args.pretrain_steps} steps, lr 1e-3) from init0, vs init0", pre[0], prints["init0"],
           states["init0"])  # fmt: skip
    bf16 = copy.deepcopy(pre[0]).to(torch.bfloat16)
    report("pre0 in bfloat16, vs pre0", bf16, prints["pre0"], states["pre0"])
    for start in ("pre0", "init0"):
        clip = pre[0] if start == "pre0" else init[0]
        for lr in (1e-4, 1e-3, 1e-2, 3e-2):
            finetune(clip, target, lr, args.steps, False, prints[start], states[start], f"classifier from {start}")
        finetune(clip, target, 1e-2, args.steps, True, prints[start], states[start], f"classifier from {start}")
    names = list(tiny.CLASS_NAMES)
    toy = tiny.build_dataset(256, seed=0)
    for lr in (3e-3, 1e-2):
        model = SelfExplainingCLIPVision.from_clip(copy.deepcopy(pre[0]), names, tokenizer=tiny_clip_tokenizer())
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainingConfig(tmp, learning_rate=lr, max_steps=args.steps, per_device_batch_size=32,
                                    disable_tqdm=True, log_every=args.steps)  # fmt: skip
            train(model, toy, config)
        report(f"hf_explvec.train from pre0, alpha 0.8, lr {lr:g}, {args.steps} steps", model, prints["pre0"],
               states["pre0"])  # fmt: skip

    print("-- foreign pretrainings")
    report("init1 vs init0", init[1], prints["init0"], states["init0"])
    report("init1 vs pre0", init[1], prints["pre0"], states["pre0"])
    report("pre1 vs pre0 (same data, other init)", pre[1], prints["pre0"], states["pre0"])
    report("pre1 vs init0", pre[1], prints["init0"], states["init0"])
    report("pre0 vs init1", pre[0], prints["init1"], states["init1"])
    finetune(pre[1], target, 1e-3, args.steps, False, prints["pre0"], states["pre0"], "classifier from pre1, vs pre0")


if __name__ == "__main__":
    main()
