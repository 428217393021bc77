"""Benchmark: patch Kernel SHAP (hf_explvec.attribution) against captum's KernelShap and the forward limit.

Speed, on a tiny CLIP ViT (image 224, patch 32 -> M = 49 patches, random weights, 10-class linear head):
    - images/s explained by `patch_kernel_shap` (batch_size masked images per forward call);
    - images/s explained by captum's `KernelShap` (feature_mask = patches, same n_samples,
      perturbations_per_eval = the same batch size);
    - the forward limit: forward images/s at batch 64 divided by num_samples (no method can beat it).
  Rounds are interleaved (limit, ours, captum, limit, ours, captum, ...) so all see the same machine
  load; the median round is reported.

Accuracy, on a tiny CLIP ViT with image 64, patch 16 -> M = 16: exact Shapley values from all 2**16
coalitions (brute-force formula, independent of the library's sampler and solver), then the RMSE of both
methods at the same num_samples, over several seeds.

Usage:
    python scripts/bench_kernel_shap.py            # full run
    python scripts/bench_kernel_shap.py --quick    # short run
Needs the `bench` extra: pip install captum.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from hf_explvec import SelfExplainingCLIPVision, SelfExplainingCLIPVisionConfig, model_kernel_shap
from hf_explvec.attribution import patch_kernel_shap

try:
    from captum.attr import KernelShap
except ImportError as err:  # pragma: no cover - the script's own message
    raise SystemExit("captum is needed for this benchmark: pip install captum (the 'bench' extra)") from err


def tiny_vision_config(image_size: int, patch_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )


def tiny_self_explaining(num_classes: int = 10) -> SelfExplainingCLIPVision:
    """The same tower as TinyCLIPClassifier(224, 32), as a SelfExplainingCLIPVision (projection 64, text head)."""
    config = SelfExplainingCLIPVisionConfig(
        vision_config=tiny_vision_config(224, 32).to_dict(),
        projection_dim=64,
        class_names=[f"class {i}" for i in range(num_classes)],
    )
    return SelfExplainingCLIPVision(config).eval()


class TinyCLIPClassifier(nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_classes: int = 10):
        super().__init__()
        config = tiny_vision_config(image_size, patch_size)
        self.vision = CLIPVisionModel(config)
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.vision(pixel_values=pixel_values).pooler_output)


def load_images(count: int, size: int) -> torch.Tensor:
    """Real photos from scikit-image when available (CLIP-normalised), else Gaussian noise."""
    try:
        from skimage import data
        from skimage.transform import resize

        names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
        photos = [resize(getattr(data, n)(), (size, size), anti_aliasing=True) for n in names]
        x = torch.tensor(np.stack(photos), dtype=torch.float32).permute(0, 3, 1, 2)
        x = x.repeat((count + len(names) - 1) // len(names), 1, 1, 1)[:count]
        mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
        std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
        return (x - mean) / std
    except Exception:  # noqa: BLE001 - any failure: fall back to noise
        return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def patch_feature_mask(size: int, patch: int) -> torch.Tensor:
    grid = size // patch
    ids = torch.arange(grid * grid).view(grid, grid)
    return ids.repeat_interleave(patch, 0).repeat_interleave(patch, 1).view(1, 1, size, size)


def run_captum(model, images, target, patch, num_samples, batch_size) -> torch.Tensor:
    explainer = KernelShap(model)
    mask = patch_feature_mask(images.shape[-1], patch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        attr = explainer.attribute(
            images,
            baselines=0.0,
            target=target,
            feature_mask=mask,
            n_samples=num_samples,
            perturbations_per_eval=batch_size,
            return_input_shape=False,
        )
    return attr.view(images.shape[0], -1)


def forward_limit(model, batch: torch.Tensor, images_needed: int) -> None:
    """Forward `images_needed` images (rounded up to whole batches) of one pre-built batch."""
    with torch.inference_mode():
        for _ in range(math.ceil(images_needed / batch.shape[0])):
            model(batch)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def exact_shapley(model, image: torch.Tensor, target: int, patch: int, batch: int = 1024) -> torch.Tensor:
    """Exact Shapley values of the patch game with a 0 baseline: all 2**M coalitions, brute force."""
    size = image.shape[-1]
    grid = size // patch
    m = grid * grid
    codes = torch.arange(2**m)
    bits = ((codes.unsqueeze(1) >> torch.arange(m)) & 1).bool()  # (2**M, M): bit j = patch j present
    values = torch.empty(2**m, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, 2**m, batch):
            keep = bits[start : start + batch].view(-1, 1, grid, 1, grid, 1)
            keep = keep.expand(-1, 1, grid, patch, grid, patch).reshape(-1, 1, size, size)
            values[start : start + batch] = model(image.unsqueeze(0) * keep)[:, target].double()
    v = values.numpy()
    sizes = bits.sum(1).numpy()
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    phi = np.empty(m)
    for i in range(m):
        without = codes[~bits[:, i]].numpy()
        phi[i] = np.sum(weight[sizes[without]] * (v[without | (1 << i)] - v[without]))
    return torch.from_numpy(phi)


def speed(args) -> dict:
    torch.manual_seed(0)
    model = TinyCLIPClassifier(224, 32).eval()
    clip_model = tiny_self_explaining()
    images = load_images(args.images, 224)
    with torch.inference_mode():
        target = model(images).argmax(-1)
        clip_target = clip_model(images).logits.argmax(-1)
    n, bsz = args.num_samples, args.batch_size
    count = images.shape[0]
    calls = math.ceil(count * n / 64)
    limit_batch = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    forward_limit(model, limit_batch, 64)  # warm-up
    forward_limit(clip_model, limit_batch, 64)
    times = {"limit": [], "ours": [], "captum": [], "clip_limit": [], "clip_embedding": []}
    for r in range(args.rounds):
        for key, forward in (("limit", model), ("clip_limit", clip_model)):
            wall, cpu = timed(lambda forward=forward: forward_limit(forward, limit_batch, count * n))
            # the limit explains count images in the time of count * n forwards (whole batches were run)
            times[key].append((wall * count * n / (calls * 64), cpu * count * n / (calls * 64)))

        def ours(r=r):
            with torch.inference_mode():
                patch_kernel_shap(model, images, target, patch_size=32, num_samples=n, batch_size=bsz, seed=r)

        def captum(r=r):
            torch.manual_seed(r)
            run_captum(model, images, target, 32, n, bsz)

        def clip_embedding(r=r):
            model_kernel_shap(clip_model, images, clip_target, num_samples=n, batch_size=bsz, seed=r)

        times["ours"].append(timed(ours))
        times["captum"].append(timed(captum))
        times["clip_embedding"].append(timed(clip_embedding))
    wall = {k: count / statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: count / statistics.median(t[1] for t in v) for k, v in times.items()}
    return {"wall": wall, "cpu": cpu}


def accuracy(args) -> dict:
    torch.manual_seed(1)
    model = TinyCLIPClassifier(64, 16).eval()
    images = load_images(args.rmse_images, 64)
    with torch.inference_mode():
        target = model(images).argmax(-1)
    exact = torch.stack([exact_shapley(model, images[i], int(target[i]), 16) for i in range(images.shape[0])])
    n = args.rmse_samples
    ours, theirs = [], []
    for seed in range(args.seeds):
        with torch.inference_mode():
            ours.append(
                patch_kernel_shap(model, images, target, patch_size=16, num_samples=n, batch_size=64, seed=seed)
            )
        torch.manual_seed(seed)
        theirs.append(run_captum(model, images, target, 16, n, 64))

    def rmse(estimates):
        return torch.stack(estimates).double().sub(exact).pow(2).mean().sqrt().item()

    return {"ours": rmse(ours), "captum": rmse(theirs), "scale": exact.pow(2).mean().sqrt().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (fewer images, rounds and seeds)")
    parser.add_argument("--num-samples", type=int, default=None, help="evaluations per image (default 500; quick 200)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    args.num_samples = args.num_samples or (200 if quick else 500)
    args.images = 2 if quick else 4
    args.rounds = 3 if quick else 5
    args.rmse_images = 2 if quick else 4
    args.rmse_samples = args.num_samples
    args.seeds = 3 if quick else 8

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(
        f"speed: tiny CLIP ViT image 224 patch 32 (M=49), {args.images} images, num_samples={args.num_samples}, "
        f"batch_size={args.batch_size}, "
        f"{args.rounds} interleaved rounds (limit, ours, captum, CLIP limit, CLIP embedding), median round"
    )
    s = speed(args)
    for clock, label in (("wall", "images/s (wall clock)"), ("cpu", "images per CPU-second (process time)")):
        r = s[clock]
        print(f"  {label}:")
        print(f"    forward limit (fwd img/s at batch 64 / N): {r['limit']:8.3f}")
        print(f"    hf_explvec patch_kernel_shap            : {r['ours']:8.3f}")
        print(f"    captum KernelShap                       : {r['captum']:8.3f}")
        print(f"    ours / limit  = {r['ours'] / r['limit']:.2f}   (goal >= 0.8)")
        print(f"    ours / captum = {r['ours'] / r['captum']:.2f}   (goal >= 3)")
        print(f"    SelfExplainingCLIPVision, same tower: forward limit {r['clip_limit']:8.3f}")
        print(f"    hf_explvec model_kernel_shap (embedding masking): {r['clip_embedding']:8.3f}")
        print(f"    embedding / limit = {r['clip_embedding'] / r['clip_limit']:.2f}   (goal >= 1.0)")
    print(
        f"accuracy: tiny CLIP ViT image 64 patch 16 (M=16), exact Shapley from 2**16 coalitions, "
        f"{args.rmse_images} images x {args.seeds} seeds, num_samples={args.rmse_samples} each"
    )
    a = accuracy(args)
    print(f"  RMS of exact values: {a['scale']:.5f}")
    print(f"  RMSE ours   : {a['ours']:.5f}")
    print(f"  RMSE captum : {a['captum']:.5f}")
    print(f"  rmse ours / captum = {a['ours'] / a['captum']:.3f}   (goal <= 0.5)")


if __name__ == "__main__":
    main()
