"""Kernel SHAP over image patches by painting absent patches with a baseline.

[`patch_kernel_shap`] explains an image classifier given only as a forward function: the players are
the patches of a regular grid, in row-major order, and the value of a coalition is the target score of
the image whose patches outside the coalition are replaced by a baseline. The masked images of several
inputs share each forward chunk; masks are upsampled by broadcasting, never by Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._validation import check_finite_tensor, check_pixel_values
from ._forward import (
    VALUE_OPTIONS,
    check_class_range,
    check_finite_values,
    check_targets,
    logits_of,
    score,
    select_targets,
)
from .kernel_shap import kernel_shap

__all__ = [
    "patch_kernel_shap",
    "make_baseline",
    "gaussian_blur",
    "to_patch_grid",
    "mask_patches",
    "VALUE_OPTIONS",
    "BASELINE_OPTIONS",
]

BASELINE_OPTIONS = ("mean", "blur")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    r"""Separable Gaussian blur with edge replication.

    Args:
        images (`torch.Tensor` of shape `(B, C, H, W)`): floating-point images.
        sigma (`float`): standard deviation in pixels (> 0); the kernel spans ``±ceil(3 sigma)``.

    Returns:
        `torch.Tensor` of shape `(B, C, H, W)`, same dtype and device.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def make_baseline(
    pixel_values: torch.Tensor, baseline: float | str | torch.Tensor, patch_size: int
) -> float | torch.Tensor:
    r"""Resolve a baseline option to a float or a 4-D tensor broadcastable to `pixel_values`.

    Args:
        pixel_values (`torch.Tensor` of shape `(B, C, H, W)`): the images.
        baseline (`float`, `str` or `torch.Tensor`):
            - a number: every absent pixel takes this value (0.0 is the mean pixel after CLIP
              normalisation);
            - ``"mean"``: the per-image, per-channel mean, shape `(B, C, 1, 1)`;
            - ``"blur"``: a Gaussian-blurred copy of each image, ``sigma = patch_size / 4`` pixels, shape
              `(B, C, H, W)` (call [`gaussian_blur`] and pass a tensor for another sigma);
            - a tensor broadcastable to `pixel_values` (e.g. `(C, 1, 1)`, `(1, C, H, W)`, `(B, C, H, W)`).
        patch_size (`int`): the patch side, for the blur width.

    Returns:
        `float`, or `torch.Tensor` with 4 dimensions, each either 1 or that of `pixel_values`, on its device
        and dtype.
    """
    if isinstance(baseline, bool):
        raise TypeError("baseline must be a float, 'mean', 'blur' or a torch.Tensor, got bool")
    if isinstance(baseline, (int, float)):
        value = float(baseline)
        if not math.isfinite(value):
            raise ValueError(f"baseline must be finite, got {baseline}")
        return value
    if isinstance(baseline, str):
        if baseline == "mean":
            return pixel_values.mean(dim=(2, 3), keepdim=True)
        if baseline == "blur":
            return gaussian_blur(pixel_values, sigma=max(patch_size / 4.0, 0.5))
        raise ValueError(f"baseline must be a float, one of {BASELINE_OPTIONS} or a tensor, got {baseline!r}")
    if isinstance(baseline, torch.Tensor):
        if baseline.dim() > 4:
            raise ValueError(f"baseline tensor must have at most 4 dimensions, got shape {tuple(baseline.shape)}")
        try:
            shape = torch.broadcast_shapes(baseline.shape, pixel_values.shape)
        except RuntimeError:
            shape = None
        if shape != pixel_values.shape:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to pixel_values "
                f"of shape {tuple(pixel_values.shape)}"
            )
        if not (baseline.is_floating_point() or baseline.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"baseline tensor must be real-valued, got dtype {baseline.dtype}")
        baseline = baseline.reshape((1,) * (4 - baseline.dim()) + tuple(baseline.shape))
        return baseline.to(device=pixel_values.device, dtype=pixel_values.dtype)
    raise TypeError(f"baseline must be a float, 'mean', 'blur' or a torch.Tensor, got {type(baseline).__name__}")


def mask_patches(
    pixel_values: torch.Tensor,
    coalitions: torch.Tensor,
    input_index: torch.Tensor,
    baseline: float | torch.Tensor,
    patch_size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Images whose absent patches are replaced by the baseline.

    Computed as ``x * keep + baseline * (1 - keep)`` (exact for finite pixels: each pixel is either ``x``
    or the baseline, bit for bit) with ``keep`` a float mask of shape `(N, 1, H / p, 1, W)`: one row per
    patch row, broadcast over the ``p`` pixel rows of a patch. This keeps the inner loop contiguous over
    ``W`` and the mask in cache; it runs at about memory-copy speed, 3x faster than ``torch.where`` with a
    full boolean pixel mask on CPU. On CPU, adjacent rows of the same image (as [`kernel_shap`] sends them)
    read that image by broadcasting instead of gathering a copy per row; elsewhere (GPU) rows are gathered.

    Args:
        pixel_values (`torch.Tensor` of shape `(B, C, H, W)`): the images, contiguous and finite.
        coalitions (`torch.BoolTensor` of shape `(N, M)`): ``True`` where a patch is kept, row-major over
            the `(H / p, W / p)` grid.
        input_index (`torch.LongTensor` of shape `(N,)`): the image of each row.
        baseline (`float` or `torch.Tensor`): from [`make_baseline`] (a tensor is 4-D with batch dimension
            1 or ``B``).
        patch_size (`int`): the patch side ``p``.
        out (`torch.Tensor` of shape `(N, C, H, W)`, *optional*): where to write the result (reusing one
            buffer saves page faults on CPU).

    Returns:
        `torch.Tensor` of shape `(N, C, H, W)` (`out` when given).
    """
    batch, channels, height, width = pixel_values.shape
    gh, gw, p = height // patch_size, width // patch_size, patch_size
    n = coalitions.shape[0]
    dtype, device = pixel_values.dtype, pixel_values.device
    if out is None:
        out = torch.empty(n, channels, height, width, dtype=dtype, device=device)
    keep = coalitions.to(dtype).view(n, 1, gh, 1, gw, 1).expand(n, 1, gh, 1, gw, p).reshape(n, 1, gh, 1, width)
    target = out.view(n, channels, gh, p, width)
    images = pixel_values.view(batch, channels, gh, p, width)
    if isinstance(baseline, torch.Tensor):
        # (Bb, Cb, Hb, Wb) with Hb in {1, H}: split H into (H / p, p), or (1, 1)
        bb, cb, hb, wb = baseline.shape
        base = baseline.reshape(bb, cb, gh if hb > 1 else 1, p if hb > 1 else 1, wb)
        per_image_base = bb > 1
    else:
        base, per_image_base = float(baseline), False
    absent = None if isinstance(base, float) and base == 0.0 else 1 - keep

    def fill_absent(rows: slice | torch.Tensor, image: slice | torch.Tensor) -> None:
        if absent is None:
            return
        if isinstance(base, float):
            target[rows].add_(absent[rows], alpha=base)
        else:
            target[rows].addcmul_(base[image] if per_image_base else base, absent[rows])

    if device.type == "cpu":
        runs, counts = torch.unique_consecutive(input_index, return_counts=True)
        if runs.numel() <= max(16, n // 4):
            start = 0
            for b, count in zip(runs.tolist(), counts.tolist(), strict=True):
                rows = slice(start, start + count)
                torch.mul(images[b : b + 1], keep[rows], out=target[rows])
                fill_absent(rows, slice(b, b + 1))
                start += count
            return out
    torch.mul(images[input_index], keep, out=target)
    fill_absent(slice(None), input_index)
    return out


def to_patch_grid(values: torch.Tensor, grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
    r"""Reshape per-patch values from row-major order to the patch grid.

    Args:
        values (`torch.Tensor` of shape `(..., M)`): e.g. the output of [`patch_kernel_shap`].
        grid_shape (`tuple[int, int]`, *optional*): ``(H / p, W / p)``; defaults to a square grid
            ``(g, g)`` with ``g * g == M``.

    Returns:
        `torch.Tensor` of shape `(..., gh, gw)` (a view).
    """
    m = values.shape[-1]
    if grid_shape is None:
        g = math.isqrt(m)
        if g * g != m:
            raise ValueError(f"{m} patches do not form a square grid; pass grid_shape=(rows, cols)")
        grid_shape = (g, g)
    gh, gw = grid_shape
    if gh * gw != m:
        raise ValueError(f"grid_shape {tuple(grid_shape)} has {gh * gw} cells, expected {m}")
    return values.reshape(tuple(values.shape[:-1]) + (gh, gw))


class _PatchGame:
    """The value function of [`patch_kernel_shap`]: paint, forward, pick the target score."""

    def __init__(self, forward_fn, pixels, targets, baseline, patch_size, value):
        self.forward_fn, self.pixels, self.targets = forward_fn, pixels, targets
        self.baseline, self.patch_size, self.value = baseline, patch_size, value
        self.num_classes: int | None = None  # known after the first forward call
        self.buffer: torch.Tensor | None = None  # CPU: one input buffer for every chunk (avoids page faults)

    def __call__(self, coalitions: torch.Tensor, input_index: torch.Tensor) -> torch.Tensor:
        rows = coalitions.shape[0]
        out = None
        if self.pixels.device.type == "cpu":
            if self.buffer is None:  # the first chunk is the largest
                self.buffer = torch.empty((rows,) + tuple(self.pixels.shape[1:]), dtype=self.pixels.dtype)
            out = self.buffer[:rows]
        images = mask_patches(self.pixels, coalitions, input_index, self.baseline, self.patch_size, out=out)
        logits = logits_of(self.forward_fn(images), rows)
        if self.num_classes is None:
            check_class_range(self.targets, logits.shape[1], source="forward_fn")
            self.num_classes = logits.shape[1]
        elif logits.shape[1] != self.num_classes:
            raise ValueError(f"forward_fn returned {logits.shape[1]} classes after {self.num_classes} before")
        values = select_targets(score(logits, self.value), self.targets, input_index)
        check_finite_values(values, input_index, name="forward_fn")
        return values


def patch_kernel_shap(
    forward_fn: Callable[[torch.Tensor], torch.Tensor],
    pixel_values: torch.Tensor,
    target: int | torch.Tensor,
    *,
    patch_size: int,
    num_samples: int = 500,
    baseline: float | str | torch.Tensor = 0.0,
    batch_size: int = 64,
    seed: int | None = None,
    value: str = "logit",
) -> torch.Tensor:
    r"""Kernel SHAP values of the image patches for a class score.

    The players are the ``M = (H / p) * (W / p)`` patches in row-major order. The value of a coalition
    ``S`` is the `target` score of the image whose patches outside ``S`` are set to `baseline`. Sampling,
    enumeration and the constrained solve are those of [`kernel_shap`]; the result sums, per image, to
    ``value(image) - value(baseline image)``.

    Args:
        forward_fn (`Callable[[torch.Tensor], torch.Tensor]`):
            maps images `(N, C, H, W)` to class scores `(N, num_classes)` (or an object with a `.logits`
            tensor). It is called under `torch.inference_mode()` with ``N <= batch_size``. It must not keep
            a reference to its input: on CPU the same buffer is refilled for the next call.
        pixel_values (`torch.FloatTensor` of shape `(B, C, H, W)`): the images as the image processor prepares them
            (floating point and finite). Raw pixels (uint8 tensors, numpy arrays, PIL images) are refused: the same
            policy as [`SelfExplainingCLIPVision`] and [`model_kernel_shap`].
        target (`int` or `torch.LongTensor` of shape `(B,)`): the explained class (per image).
        patch_size (`int`): patch side ``p``, dividing ``H`` and ``W``.
        num_samples (`int`, *optional*, defaults to 500):
            forward passes per image, including the original and the all-baseline image; at least
            ``2 M`` (see [`min_num_samples`]); with ``num_samples >= 2**M`` every coalition is evaluated
            and the values are exact.
        baseline (`float`, `str` or `torch.Tensor`, *optional*, defaults to 0.0): see [`make_baseline`]:
            a number, ``"mean"``, ``"blur"`` or a tensor broadcastable to `pixel_values`.
        batch_size (`int`, *optional*, defaults to 64): masked images per forward call; a chunk mixes the
            perturbations of consecutive images.
        seed (`int`, *optional*): seed for the coalition sampler (a private CPU generator): the same seed
            gives the same values whatever `batch_size`.
        value (`str`, *optional*, defaults to `"logit"`): the explained score: ``"logit"`` (raw score),
            ``"log_prob"`` (log-softmax) or ``"prob"`` (softmax).

    Returns:
        `torch.Tensor` of shape `(B, M)`, float32, on the device of `pixel_values`. Use [`to_patch_grid`]
        for `(B, H / p, W / p)`.

    Raises:
        TypeError: `pixel_values` not a floating tensor, `target`, `patch_size`, `num_samples` or
            `baseline` of the wrong type.
        ValueError: `pixel_values` not 4-D or not finite (naming the image index), `patch_size` not dividing ``H``
            or ``W``, `num_samples` below ``2 M``, `target` outside ``[0, num_classes)`` (checked on the first
            forward chunk), unknown `value` or `baseline` option, baseline tensor not broadcastable, or `forward_fn`
            returning NaN or infinite scores for any coalition (naming the image index; no partial result).
    """
    check_pixel_values(pixel_values)
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must have shape (B, C, H, W), got {pixel_values.dim()}-D shape {tuple(pixel_values.shape)}"
        )
    if not callable(forward_fn):
        raise TypeError(f"forward_fn must be callable, got {type(forward_fn).__name__}")
    check_finite_tensor(pixel_values, "pixel_values", unit="image index")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"patch_size must be an int, got {type(patch_size).__name__}")
    batch, _, height, width = pixel_values.shape
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(f"patch_size must be a positive divisor of H={height} and W={width}, got {patch_size}")
    if value not in VALUE_OPTIONS:
        raise ValueError(f"value must be one of {VALUE_OPTIONS}, got {value!r}")
    targets = check_targets(target, batch, device=pixel_values.device)
    base = make_baseline(pixel_values, baseline, patch_size)
    if isinstance(base, torch.Tensor) and not bool(torch.isfinite(base).all()):
        raise ValueError("baseline must be finite, found NaN or infinite values")
    num_players = (height // patch_size) * (width // patch_size)
    game = _PatchGame(forward_fn, pixel_values.contiguous(), targets, base, patch_size, value)
    return kernel_shap(
        game, num_players, batch, num_samples=num_samples, batch_size=batch_size, seed=seed, device=pixel_values.device
    )
