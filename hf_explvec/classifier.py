"""Explanations from the user's own classifier head, and one entry point for every supported CLIP classifier.

[`ExplainingCLIPForImageClassification`] is transformers' `CLIPForImageClassification` (same modules, same
state-dict keys, same logits) with patch attributions. That classifier's logits are a linear head on the mean of the
vision tower's M patch tokens h_1..h_M (its last hidden state without [CLS], before `post_layernorm`):

    logits[c]                = W_c · (1/M) Σ_i h_i + b_c
    patch_attributions[c, i] = W_c · h_i / M

so Σ_i patch_attributions[c, i] = logits[c] − b_c exactly (up to float rounding): the classifier's own head applied to
each patch, as the paper applies the text head of a zero-shot model. Task vectors apply to it with their canonical
names (`vision_model.*`), so an explainability vector turns the classifier into a self-explaining one.

[`explaining_model`] takes a model of any supported class and returns its explaining version.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPForImageClassification, CLIPModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init

from ._validation import check_finite_tensor, check_pixel_values
from .configuration import ExplainingCLIPForImageClassificationConfig
from .heads import DEFAULT_TEMPLATES
from .modeling import (
    IGNORE_INDEX,
    ExplainingModelHubMixin,
    MissingHeadError,
    SelfExplainingCLIPVision,
    SelfExplainingOutput,
    check_head_loaded,
    load_checked,
)

__all__ = ["SUPPORTED_MODEL_CLASSES", "ExplainingCLIPForImageClassification", "explaining_model"]

_HUB_CONFIG_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
_REMEDY = (
    "For a CLIPForImageClassification use ExplainingCLIPForImageClassification.from_classifier(...); for a CLIPModel "
    "(zero-shot) use SelfExplainingCLIPVision.from_clip(..., class_names); a CLIPVisionModel has no classifier: "
    "fine-tune a CLIPForImageClassification (or pick class names for a CLIPModel) first."
)


def _is_single_label(config) -> bool:
    return config.num_labels > 1 and config.problem_type in (None, "single_label_classification")


class ExplainingCLIPForImageClassification(ExplainingModelHubMixin, PreTrainedModel):
    r"""
    transformers' `CLIPForImageClassification` with patch attributions from its own linear head.

    The modules and state-dict keys are those of `CLIPForImageClassification` (`vision_model.*`, `classifier.weight`,
    `classifier.bias`), so its weights copy 1:1 and task vectors apply with their canonical names. Build one from a
    trained classifier with [`~ExplainingCLIPForImageClassification.from_classifier`] (a model, or its name or path);
    save it with `save_pretrained` / `push_to_hub` (weights, config and image processor) and, after
    `import hf_explvec`, load it with `AutoModel`, `AutoModelForImageClassification` or
    `pipeline("image-classification")`, without `trust_remote_code`.

    Patch attributions: with h_i (i = 1..M) the patch tokens of the vision tower's last hidden state (before
    `post_layernorm`, as the classifier takes them), `patch_attributions[c, i] = W_c · h_i / M`. They sum over the
    patches to `logits[c] - classifier.bias[c]`.

    Example:

    ```python
    >>> import torch
    >>> from transformers import CLIPForImageClassification
    >>> from hf_explvec import ExplainingCLIPForImageClassification
    >>> from hf_explvec.testing import tiny_clip_config

    >>> config = tiny_clip_config()
    >>> config.id2label = {0: "cat", 1: "dog"}
    >>> classifier = CLIPForImageClassification(config).eval()
    >>> model = ExplainingCLIPForImageClassification.from_classifier(classifier)
    >>> pixel_values = torch.randn(2, 3, 32, 32)
    >>> outputs = model(pixel_values)
    >>> torch.equal(outputs.logits, classifier(pixel_values).logits)
    True
    >>> outputs.patch_attributions.shape
    torch.Size([2, 2, 16])
    ```
    """

    config_class = ExplainingCLIPForImageClassificationConfig
    _push_commit_message = "Upload explaining CLIP classifier with hf_explvec"
    base_model_prefix = "explaining_clip_image_classifier"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    HEAD_KEYS = ("classifier.weight", "classifier.bias")
    """The state-dict keys of the head: a checkpoint without them is refused by `from_pretrained`."""

    def __init__(self, config: ExplainingCLIPForImageClassificationConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.classifier = nn.Linear(config.vision_config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is self:  # as CLIPForImageClassification initialises its classifier
            factor = self.config.vision_config.initializer_factor
            init.normal_(self.classifier.weight, std=self.config.vision_config.hidden_size**-0.5 * factor)
            init.zeros_(self.classifier.bias)

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        r"""
        Load a saved [`ExplainingCLIPForImageClassification`], or make one from a saved `CLIPForImageClassification`
        (whose `config.json` names that architecture; then this is
        [`~ExplainingCLIPForImageClassification.from_classifier`]).

        As transformers' `from_pretrained`, with `use_safetensors=True` by default (pickled `.bin` weights are
        refused) and Hub connection failures raised as [`HubConnectionError`]. A checkpoint that lacks the
        classifier (`classifier.weight`, `classifier.bias`), such as a `CLIPVisionModel` or a `CLIPModel`, raises
        [`MissingHeadError`] naming the missing keys instead of building a random head.
        """
        if not args and kwargs.get("config") is None and _names_clip_classifier(pretrained_model_name_or_path, kwargs):
            want_info = kwargs.pop("output_loading_info", False)
            model, info = cls._from_classifier_checkpoint(pretrained_model_name_or_path, kwargs)
            return (model, info) if want_info else model
        return load_checked(
            cls, super().from_pretrained, (pretrained_model_name_or_path, *args), kwargs, cls.HEAD_KEYS, _REMEDY
        )

    @classmethod
    def _from_classifier_checkpoint(cls, name, kwargs: dict):
        """Load a `CLIPForImageClassification` by name or path (refusing a random classifier), copy it, and return
        the copy with the classifier's loading info."""
        from .hub.repo import hub_errors  # the model module does not depend on the Hub code

        name = os.fsdecode(name)
        kwargs = {"use_safetensors": True, **kwargs}
        commit = None
        with hub_errors(name, "model", kwargs.get("revision")):
            if not os.path.isdir(name):  # one commit for config and weights, recorded as the provenance
                from huggingface_hub import HfApi

                options = {key: kwargs[key] for key in ("cache_dir", "local_files_only") if key in kwargs}
                resolved = HfApi(token=kwargs.get("token")).resolve_revision(
                    name, revision=kwargs.get("revision"), **options
                )
                kwargs["revision"], commit = resolved, resolved.resolved
            classifier, info = CLIPForImageClassification.from_pretrained(name, output_loading_info=True, **kwargs)
        if not isinstance(classifier.classifier, nn.Linear):
            raise MissingHeadError(_no_linear_head(classifier, name), missing_keys=cls.HEAD_KEYS)
        check_head_loaded(classifier, info, cls.HEAD_KEYS, name, _REMEDY)
        model = cls.from_classifier(classifier)
        model.config.classifier_revision = commit
        if commit is not None:  # the revision the image processor and the provenance are read at
            model.config._commit_hash = commit
        return model, info

    @classmethod
    def from_classifier(cls, classifier, **from_pretrained_kwargs) -> ExplainingCLIPForImageClassification:
        r"""
        Copy a `CLIPForImageClassification` into an explaining one: the same weights (1:1, same keys), hence exactly
        the same logits, plus patch attributions.

        Args:
            classifier (`CLIPForImageClassification` or `str`):
                A trained classifier, or a name or path for `CLIPForImageClassification.from_pretrained`. A
                checkpoint without a trained classifier (a `CLIPModel` or `CLIPVisionModel`, whose classifier would
                be random) is refused.
            from_pretrained_kwargs:
                Passed to `CLIPForImageClassification.from_pretrained` when `classifier` is a name or path (e.g.
                `revision`, `token`); `use_safetensors=True` by default.

        Returns:
            [`ExplainingCLIPForImageClassification`] in eval mode, in the classifier's dtype and on its device. Its
            config records the classifier's name or path and, when it was loaded here from the Hub, its commit
            (`classifier_revision`: the revision asked for, resolved once, so config and weights come from it).

        Raises:
            `TypeError`: `classifier` is not a `CLIPForImageClassification` (nor a name or path of one).
            [`MissingHeadError`]: it has no linear classifier (`num_labels=0` gives an `nn.Identity`), or the
                checkpoint lacks `classifier.weight` / `classifier.bias`.
            `ValueError`: its weights are on the meta device, or its `id2label` does not match its classifier.
        """
        if isinstance(classifier, (str, bytes)) or hasattr(classifier, "__fspath__"):
            return cls._from_classifier_checkpoint(classifier, from_pretrained_kwargs)[0]
        if from_pretrained_kwargs:
            raise TypeError(
                f"from_classifier got {sorted(from_pretrained_kwargs)}, which only apply when loading the classifier "
                "by name or path."
            )
        if not isinstance(classifier, CLIPForImageClassification):
            raise TypeError(
                f"from_classifier takes a transformers CLIPForImageClassification (or its name or path), got "
                f"{type(classifier).__name__}. See hf_explvec.explaining_model for the supported model classes."
            )
        if not isinstance(classifier.classifier, nn.Linear):
            raise MissingHeadError(_no_linear_head(classifier, None), missing_keys=cls.HEAD_KEYS)
        source = classifier.config
        weight = classifier.classifier.weight
        if any(p.is_meta for p in classifier.parameters()):
            raise ValueError(
                "the CLIPForImageClassification is on the meta device: its weights hold no values to copy. Load its "
                "weights first (e.g. from_pretrained)."
            )
        labels = {int(k): v for k, v in (source.id2label or {}).items()}
        if len(labels) != weight.shape[0]:
            raise ValueError(
                f"the classifier has {weight.shape[0]} outputs but its config.id2label has {len(labels)} entries "
                f"({labels}); make them agree before explaining it."
            )
        config = ExplainingCLIPForImageClassificationConfig(
            vision_config=source.vision_config.to_dict(),
            id2label=labels,
            label2id={name: i for i, name in labels.items()},
            problem_type=source.problem_type,
            classifier_name_or_path=source._name_or_path or None,
        )
        config._attn_implementation = source._attn_implementation
        model = cls(config).to(device=weight.device, dtype=weight.dtype)
        model.load_state_dict(classifier.state_dict())  # strict: the same keys, copied
        # Named after the classifier, as transformers names a loaded model: explain() then finds the classifier's own
        # image processor there, and apply_vector records the classifier as the explained model's source.
        model.config._name_or_path = model.name_or_path = source._name_or_path
        return model.eval()

    # -------------------------------------------------------------------------------------------------- forward
    def _check_inputs(self, pixel_values: torch.Tensor, labels) -> None:
        """Refuse raw or wrongly sized pixels and, on the loss path, malformed labels or non-finite pixels."""
        check_pixel_values(pixel_values)
        vision = self.config.vision_config
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch_size, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width of this model), got {tuple(pixel_values.shape)}."
            )
        if labels is None:
            return
        batch_size, num_classes = pixel_values.shape[0], self.config.num_labels
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}.")
        if labels.shape[0:1] != (batch_size,):
            raise ValueError(f"labels must have one row per image ({batch_size}), got shape {tuple(labels.shape)}.")
        if _is_single_label(self.config):
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(
                    f"labels must hold integer class ids in [0, {num_classes - 1}] (dtype torch.long), got dtype "
                    f"{labels.dtype}."
                )
            if labels.dim() != 1:
                raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}.")
            labels = labels.to(pixel_values.device)
            out_of_range = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_INDEX)
            bad_label, bad_pixels = torch.stack([out_of_range.any(), ~torch.isfinite(pixel_values).all()]).tolist()
            if bad_label:
                row = int(out_of_range.nonzero()[0, 0])
                raise ValueError(
                    f"labels must be class ids in [0, {num_classes - 1}] (or {IGNORE_INDEX} to leave a row out of the "
                    f"cross-entropy), got {int(labels[row])} at row {row}."
                )
        else:
            bad_pixels = not bool(torch.isfinite(pixel_values).all())
        if bad_pixels:
            check_finite_tensor(pixel_values, "pixel_values", unit="row")

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> SelfExplainingOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images as prepared by the model's image processor. Raw pixels (PIL images, arrays, integer tensors)
                are refused with a `TypeError`, other shapes with a `ValueError`.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)` (`-100` leaves a row out); when given, `loss` is the
                cross-entropy, computed as `CLIPForImageClassification` computes it (transformers' `loss_function`,
                which also covers `problem_type` "regression" and "multi_label_classification").
            kwargs:
                Passed to the vision tower, e.g. `output_hidden_states=True`, `output_attentions=True`.

        Returns:
            [`SelfExplainingOutput`] with `logits` `(batch_size, num_labels)`, exactly the classifier's, and
            `patch_attributions` `(batch_size, num_labels, num_patches)`, `W_c · h_i / M`, patches in row-major order
            of the grid; they sum over the patches to `logits - classifier.bias`. `image_embeds` is `None`.
        """
        kwargs.pop("return_dict", None)
        self._check_inputs(pixel_values, labels)
        vision_outputs = self.vision_model(pixel_values=pixel_values, **kwargs)
        patch_tokens = vision_outputs.last_hidden_state[:, 1:, :]
        logits = self.classifier(torch.mean(patch_tokens, dim=1))  # CLIPForImageClassification's computation
        # (B, M, H) @ (H, C) -> (B, M, C) -> (B, C, M)
        patch_attributions = torch.matmul(patch_tokens, self.classifier.weight.t()).transpose(1, 2)
        patch_attributions = patch_attributions / patch_tokens.shape[1]

        loss = ce_loss = None
        if labels is not None:
            if _is_single_label(self.config):
                labels = labels.to(logits.device, torch.long)
                loss = ce_loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            else:
                loss = self.loss_function(labels, logits, self.config)  # as CLIPForImageClassification calls it
        return SelfExplainingOutput(
            loss=loss,
            logits=logits,
            patch_attributions=patch_attributions,
            ce_loss=ce_loss,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )


def _no_linear_head(classifier, name: str | None) -> str:
    where = f"{name!r} " if name else ""
    return (
        f"the CLIPForImageClassification {where}has no linear classifier (config.num_labels="
        f"{classifier.config.num_labels}, classifier is {type(classifier.classifier).__name__}): there is no head to "
        "explain its features with. Fine-tune it with num_labels >= 1, or use SelfExplainingCLIPVision.from_clip with "
        "class names for zero-shot classification."
    )


def _names_clip_classifier(name_or_path, kwargs: dict) -> bool:
    """Whether the `config.json` at `name_or_path` is a transformers `CLIPForImageClassification`'s (one small
    file; a config that cannot be read is left to `from_pretrained` to report)."""
    from transformers import PreTrainedConfig

    from .hub.repo import hub_errors

    name = os.fsdecode(name_or_path) if isinstance(name_or_path, (str, bytes, os.PathLike)) else None
    if name is None:
        return False
    hub_kwargs = {key: kwargs[key] for key in _HUB_CONFIG_KWARGS if key in kwargs}
    try:
        with hub_errors(name, "model", kwargs.get("revision")):
            config_dict, _ = PreTrainedConfig.get_config_dict(name, **hub_kwargs)
    except (OSError, ValueError):
        return False
    return config_dict.get("model_type") == "clip" and "CLIPForImageClassification" in (
        config_dict.get("architectures") or []
    )


SUPPORTED_MODEL_CLASSES = {
    "CLIPForImageClassification": "ExplainingCLIPForImageClassification.from_classifier (its linear head per patch)",
    "CLIPModel": "SelfExplainingCLIPVision.from_clip (zero-shot: text embeddings of class prompts per patch)",
    "SelfExplainingCLIPVision": "returned unchanged",
    "ExplainingCLIPForImageClassification": "returned unchanged",
}
"""The model classes [`explaining_model`] accepts, and what it does with each."""


def explaining_model(
    model,
    *,
    class_names: list[str] | None = None,
    tokenizer=None,
    templates: tuple[str, ...] | list[str] = DEFAULT_TEMPLATES,
):
    r"""
    The explaining version of a CLIP classifier: one forward pass gives its logits and patch attributions.

    - `CLIPForImageClassification` -> [`ExplainingCLIPForImageClassification`], with the same logits;
      `patch_attributions[c, i] = W_c · h_i / M`, which sum to `logit_c - b_c`.
    - `CLIPModel` (zero-shot) -> [`SelfExplainingCLIPVision`], with CLIP's zero-shot logits;
      `patch_attributions[c, i] = s <z_i, t_c> / (‖z_0‖ M)` (see [`hf_explvec.modeling`]).
    - an explaining model -> `model` itself.

    Args:
        model (`CLIPForImageClassification`, `CLIPModel`, [`SelfExplainingCLIPVision`] or
            [`ExplainingCLIPForImageClassification`]): The classifier (a loaded model, not a name: load it with
            `from_pretrained` first, or use [`ExplainingCLIPForImageClassification.from_classifier`] with a name).
        class_names (`list[str]`, *optional*): Required for a `CLIPModel` (the zero-shot classes); refused for the
            other classes, whose labels are in their config.
        tokenizer (*optional*): The CLIP tokenizer, required for a `CLIPModel`.
        templates (`Sequence[str]`, *optional*, defaults to `("a photo of a {}.",)`): Prompt templates for a
            `CLIPModel`.

    Returns:
        [`ExplainingCLIPForImageClassification`] or [`SelfExplainingCLIPVision`], in eval mode. The input model is
        not modified (its weights are copied).

    Raises:
        `TypeError`: an unsupported model class (the message lists the supported ones).
        `ValueError`: `class_names`/`tokenizer` missing for a `CLIPModel`, or given for another class.
        [`MissingHeadError`]: a `CLIPForImageClassification` without a linear classifier.
    """
    if isinstance(model, (SelfExplainingCLIPVision, ExplainingCLIPForImageClassification)):
        if class_names is not None or tokenizer is not None:
            raise ValueError(
                f"{type(model).__name__} already explains itself with its own head; class_names and tokenizer are "
                "only for a zero-shot CLIPModel."
            )
        return model
    if isinstance(model, CLIPForImageClassification):
        if class_names is not None or tokenizer is not None:
            raise ValueError(
                "class_names and tokenizer are only for a zero-shot CLIPModel; a CLIPForImageClassification has its "
                f"own classes (config.id2label = {model.config.id2label})."
            )
        return ExplainingCLIPForImageClassification.from_classifier(model)
    if isinstance(model, CLIPModel):
        if class_names is None or tokenizer is None:
            raise ValueError(
                "a zero-shot CLIPModel needs class_names (the classes, in label order) and its tokenizer to build the "
                "text-embedding head: explaining_model(clip, class_names=[...], tokenizer=tokenizer)."
            )
        return SelfExplainingCLIPVision.from_clip(model, class_names, templates=templates, tokenizer=tokenizer)
    supported = ", ".join(SUPPORTED_MODEL_CLASSES)
    hint = (
        " (a name or path: load the model first, e.g. ExplainingCLIPForImageClassification.from_classifier(name))"
        if isinstance(model, (str, bytes, os.PathLike))
        else ""
    )
    raise TypeError(f"explaining_model supports {supported}; got {type(model).__name__}{hint}.")
