"""SelfExplainingCLIPVision: a CLIP ViT classifier that outputs class logits and patch attributions in one pass.

The feature extractor is CLIP's vision tower and visual projection, with the module and parameter names of
transformers' `CLIPVisionModelWithProjection` (`vision_model.*`, `visual_projection.weight`), so CLIP weights load
straight in and task vectors line up with any CLIP model. The head is fixed: a buffer of L2-normalised CLIP text
embeddings of the class prompts and CLIP's logit scale.

Normalisation of patch tokens (the choice, and why)
---------------------------------------------------
Let `z_0` be the [CLS] token and `z_i` (i = 1..M) the patch tokens after CLIP's `post_layernorm` and
`visual_projection`, `t_c` the unit text embedding of class c and `s = exp(logit_scale)`:

    logits[c]                = s * <z_0, t_c> / ||z_0||                (exactly CLIP's zero-shot logit)
    patch_attributions[c, i] = s * <z_i, t_c> / (||z_0|| * M)

* Patch tokens go through the same `post_layernorm` and projection as [CLS]: CLIP trained the projection on
  post-layernorm tokens, so this is the space where text embeddings are meaningful.
* They are divided by the norm of the image's [CLS] embedding, not by their own norm. Per-patch normalisation would
  give every patch a cosine in [-1, 1] however little it carries, and a near-null token would get the same weight
  as a decisive one. Sharing the [CLS] norm keeps attributions linear in each patch embedding and invariant to the
  overall scale of the embeddings, exactly like the logits.
* The 1/M factor puts the attributions in the units of Shapley values of the logit: their sum is the logit that
  the mean patch embedding would get, and Kernel SHAP values of the logit sum to `f(all) - f(none)`, which is of the
  order of a logit. Without it, a well-fitted model would need patch embeddings M times smaller than [CLS].
* `config.patch_normalisation = "patches"` (the default is `"cls"`, the formula above) divides instead by the mean
  norm of the image's own patch embeddings, `m = mean_j ||z_j||` (j = 1..M):

      patch_attributions[c, i] = s * <z_i, t_c> / (m * M)

  With `"cls"` the attribution scale is tied to ||z_0||: an image whose [CLS] embedding is short gets large
  attributions, whatever its patch tokens, and fitting the attributions to Kernel SHAP values pulls on the [CLS]
  norm too. With `"patches"` the attributions depend on the patch tokens alone (still linear in each, up to the
  shared `m`, and invariant to their common scale), so their scale is decoupled from [CLS]. It has no parameter: the
  weights (hence task vectors) and the logits are identical either way, and it can be switched on a trained model;
  attributions change by the factor ||z_0|| / m per image. Like the [CLS] path there is no epsilon: a zero norm
  gives non-finite values rather than silently rescaled ones. It is the `patch_norm` row of the demo's ablations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ._validation import check_finite_tensor, check_pixel_values, check_probability
from .attribution._forward import check_targets
from .configuration import SelfExplainingCLIPVisionConfig, validate_class_names
from .heads import DEFAULT_TEMPLATES, build_class_embeddings

IGNORE_INDEX = -100
"""The label that leaves a row out of the cross-entropy (PyTorch's and transformers' `ignore_index`)."""


class MissingHeadError(ValueError):
    r"""
    A checkpoint lacks the weights of the model's head (or they do not fit it): loading it would build a random head
    and give meaningless predictions, so nothing is loaded.

    Raised by [`SelfExplainingCLIPVision.from_pretrained`] on a checkpoint without `class_embeddings`,
    `logit_scale` and `visual_projection.weight` (e.g. a `CLIPForImageClassification` or a `CLIPVisionModel`), and
    by [`ExplainingCLIPForImageClassification.from_pretrained`] / `from_classifier` on one without
    `classifier.weight` and `classifier.bias` (e.g. a `CLIPVisionModel` or a `CLIPModel`).

    Attributes:
        missing_keys (`list[str]`): The head keys the checkpoint lacks.
    """

    def __init__(self, message: str, missing_keys=()):
        super().__init__(message)
        self.missing_keys = sorted(missing_keys)


def _loading_info_keys(info: dict) -> set[str]:
    """Keys that `from_pretrained` initialised at random: missing, or mismatched (with `ignore_mismatched_sizes`)."""
    mismatched = {key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys") or ()}
    return set(info.get("missing_keys") or ()) | mismatched


def check_head_loaded(model, info: dict, head_keys, name: str, remedy: str) -> None:
    r"""
    Raise [`MissingHeadError`] when `from_pretrained` left any of `head_keys` randomly initialised.

    Args:
        model (`PreTrainedModel`): The freshly loaded model (its config names the checkpoint's architectures).
        info (`dict`): The loading info from `from_pretrained(..., output_loading_info=True)`.
        head_keys (`Iterable[str]`): The state-dict keys of the head.
        name (`str`): The name or path the checkpoint was loaded from.
        remedy (`str`): What to use instead, appended to the message.
    """
    random = _loading_info_keys(info)
    head_missing = sorted(key for key in head_keys if key in random)
    if not head_missing:
        return
    others = len(random) - len(head_missing)
    architectures = [a for a in (getattr(model.config, "architectures", None) or []) if a != type(model).__name__]
    kind = f" (it holds a {', '.join(architectures)} checkpoint)" if architectures else ""
    raise MissingHeadError(
        f"{name!r} has no {type(model).__name__} head{kind}: the checkpoint lacks {', '.join(head_missing)}"
        f"{f' (and {others} other weights)' if others else ''}. Loading it would give a randomly initialised head "
        f"and meaningless predictions, so nothing was loaded. {remedy}",
        missing_keys=head_missing,
    )


def load_checked(cls, from_pretrained, args: tuple, kwargs: dict, head_keys, remedy: str):
    """`from_pretrained(*args, **kwargs)` (transformers') with `use_safetensors=True` by default, Hub failures as
    [`HubConnectionError`], and a [`MissingHeadError`] instead of a random head."""
    from .hub.repo import hub_errors  # the model module does not depend on the Hub code

    kwargs.setdefault("use_safetensors", True)
    want_info = kwargs.pop("output_loading_info", False)
    name = str(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
    with hub_errors(name, "model", kwargs.get("revision")):  # a failed connection: HubConnectionError
        model, info = from_pretrained(*args, output_loading_info=True, **kwargs)
    check_head_loaded(model, info, head_keys, name, remedy)
    return (model, info) if want_info else model


def saved_processor_folder(config) -> str | None:
    """The local folder the model (or the classifier or CLIP model it was made from) was loaded from, when it holds
    an image processor (`preprocessor_config.json`), or the cached snapshot of the Hub commit it was loaded from
    (`config._commit_hash`, set by [`hf_explvec.load_explaining_model`]); `None` otherwise. No network."""
    for source in (config._name_or_path, getattr(config, "classifier_name_or_path", None),
                   getattr(config, "clip_name_or_path", None)):  # fmt: skip
        if source and os.path.isfile(os.path.join(source, "preprocessor_config.json")):
            return source
    # Loaded from the Hub by name (hf_explvec.load_explaining_model): its processor, fetched into the local cache at
    # the commit the model came from, is read from there (still no network).
    commit, name = getattr(config, "_commit_hash", None), config._name_or_path
    if commit and name and not os.path.isdir(name):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "preprocessor_config.json", revision=commit)
        if isinstance(cached, str):
            return os.path.dirname(cached)
    return None


def save_with_image_processor(model, save, save_directory, image_processor, kwargs: dict) -> None:
    """`save(save_directory, **kwargs)` (transformers' `save_pretrained`), then the image processor beside the
    weights (`preprocessor_config.json`): `image_processor`; else the one saved in the local folder the model (or its
    source classifier or CLIP model) was loaded from; else CLIP's, sized to the model
    ([`~hf_explvec.data.images.image_processor_for`])."""
    from .data.images import image_processor_for  # lazy: the data code imports `datasets`

    if kwargs.get("push_to_hub"):
        raise ValueError(
            f"{type(model).__name__}.save_pretrained(push_to_hub=True) is not supported: call "
            "model.push_to_hub(repo_id), which uploads the weights, the image processor and the model card in one "
            "commit. Nothing was written."
        )
    if image_processor is None:
        image_processor = image_processor_for(model, saved_processor_folder(model.config))
    elif not callable(getattr(image_processor, "save_pretrained", None)):
        raise TypeError(
            f"image_processor must be a transformers image processor (with save_pretrained), got "
            f"{type(image_processor).__name__}. Nothing was written."
        )
    save(save_directory, **kwargs)
    if kwargs.get("is_main_process", True):
        image_processor.save_pretrained(save_directory)


class ExplainingModelHubMixin:
    r"""
    Saving and pushing shared by the explaining models ([`SelfExplainingCLIPVision`],
    [`~hf_explvec.classifier.ExplainingCLIPForImageClassification`]): transformers' `save_pretrained` plus the image
    processor, and a `push_to_hub` that uploads weights, config, image processor and hf_explvec's card
    ([`hf_explvec.hub.cards.model_card`]) in one commit. Put it before `PreTrainedModel` in the bases.
    """

    _push_commit_message = "Upload explaining CLIP model with hf_explvec"

    def save_pretrained(self, save_directory, *, image_processor=None, **kwargs):
        r"""
        transformers' `save_pretrained` (safetensors weights, `config.json`), plus the image processor
        (`preprocessor_config.json`), so that `pipeline("image-classification", model=save_directory)` works after
        `import hf_explvec`.

        Args:
            save_directory (`str` or `os.PathLike`): The folder; created if missing.
            image_processor (`BaseImageProcessor`, *optional*): The processor to save. Defaults to the one saved in
                the local folder the model (or the CLIP model or classifier it was made from) was loaded from, else
                CLIP's, sized to the model ([`hf_explvec.data.images.image_processor_for`]). Pass the one your model
                was trained with if it differs.
            kwargs: As in transformers' `save_pretrained` (`push_to_hub=True` is refused: use `push_to_hub`).
        """
        save_with_image_processor(self, super().save_pretrained, save_directory, image_processor, kwargs)

    def generate_model_card(self, repo_id: str | None = None, eval_results=None):
        """The model's card ([`hf_explvec.hub.cards.model_card`]): how to use it, where its weights and head come
        from, its classes and patch grid, and the explainability vector and λ applied to it, if any
        (`config.explainability`).

        Args:
            repo_id (`str`, *optional*): Where the model lives, for the usage snippet.
            eval_results (`list[huggingface_hub.EvalResult]`, *optional*): Written as `model-index` metadata.
        """
        from .hub.cards import model_card  # the model module does not depend on the Hub code

        return model_card(self.config, repo_id, eval_results)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "50GB",
        eval_results=None,
        image_processor=None,
        **kwargs,
    ):
        r"""
        Upload the model (safetensors, config, image processor) with its card in one commit, like transformers'
        `push_to_hub`, but with hf_explvec's card: a README already in the repo that someone wrote or edited keeps its
        text and only gets its metadata updated. After `import hf_explvec`, `AutoModel.from_pretrained(repo_id)`,
        `AutoModelForImageClassification.from_pretrained(repo_id)` and `pipeline("image-classification",
        model=repo_id)` load it.

        Args:
            repo_id (`str`): The repository; created if missing.
            commit_message, commit_description, private, token, revision, create_pr, max_shard_size: As in
                transformers' `push_to_hub`.
            eval_results (`list[huggingface_hub.EvalResult]`, *optional*): Results for the card's `model-index`.
            image_processor (`BaseImageProcessor`, *optional*): As in `save_pretrained`.

        Returns:
            `huggingface_hub.CommitInfo`.
        """
        from .hub.repo import push_folder  # the model module does not depend on the Hub code

        if kwargs:
            raise TypeError(f"push_to_hub got unexpected arguments: {sorted(kwargs)}.")
        return push_folder(
            lambda folder: self.save_pretrained(folder, max_shard_size=max_shard_size, image_processor=image_processor),
            lambda: self.generate_model_card(repo_id, eval_results),
            repo_id,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message or self._push_commit_message,
            commit_description=commit_description,
            create_pr=create_pr,
        )


@dataclass
class SelfExplainingOutput(ModelOutput):
    r"""
    Output of [`SelfExplainingCLIPVision`] and [`ExplainingCLIPForImageClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            `alpha * ce_loss + (1 - alpha) * attribution_loss` (the second term only when `alpha < 1`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes)`):
            Class logits: from the [CLS] embedding through the text-embedding head (CLIP zero-shot logits) for
            [`SelfExplainingCLIPVision`]; exactly `CLIPForImageClassification`'s logits for
            [`ExplainingCLIPForImageClassification`].
        patch_attributions (`torch.FloatTensor` of shape `(batch_size, num_classes, num_patches)`):
            Attribution of each patch to each class logit (the model's head applied to each patch token; see each
            class for its normalisation); patches in row-major order of the `(grid_size, grid_size)` grid.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
            L2-normalised [CLS] embedding, as CLIP's `image_embeds` ([`SelfExplainingCLIPVision`] only).
        ce_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy of `logits` against `labels` (single-label classification).
        attribution_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` and `shap_values`
        are given):
            Mean squared error between the label class's patch attributions and `shap_values`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            Hidden states of the vision tower, each of shape `(batch_size, 1 + num_patches, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Attention weights, each of shape `(batch_size, num_heads, 1 + num_patches, 1 + num_patches)`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    patch_attributions: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    attribution_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class SelfExplainingCLIPVision(ExplainingModelHubMixin, PreTrainedModel):
    r"""
    A CLIP ViT image classifier that explains itself: one forward pass gives class logits from the [CLS] token and
    patch attributions from the patch tokens, both through the same fixed head of CLIP text embeddings.

    Build one from a CLIP model with [`~SelfExplainingCLIPVision.from_clip`], or from a config (random feature
    extractor, random unit head). Save and load it with `save_pretrained` / `from_pretrained` (safetensors); after
    `import hf_explvec`, `AutoModel` and `AutoModelForImageClassification` load it too.

    Example:

    ```python
    >>> import torch
    >>> from hf_explvec import SelfExplainingCLIPVision
    >>> from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer

    >>> model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["cat", "dog"], tokenizer=tiny_clip_tokenizer())
    >>> outputs = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]), shap_values=torch.randn(2, 16))
    >>> outputs.logits.shape, outputs.patch_attributions.shape
    (torch.Size([2, 2]), torch.Size([2, 2, 16]))
    ```
    """

    config_class = SelfExplainingCLIPVisionConfig
    _push_commit_message = "Upload self-explaining CLIP model with hf_explvec"
    base_model_prefix = "self_explaining_clip_vision"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    def __init__(self, config: SelfExplainingCLIPVisionConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        # The head: buffers, so no optimizer ever sees them and no task vector ever contains them.
        self.register_buffer("class_embeddings", torch.empty(config.num_labels, config.projection_dim))
        self.register_buffer("logit_scale", torch.empty(()))
        self.post_init()

    HEAD_KEYS = ("class_embeddings", "logit_scale", "visual_projection.weight")
    """The state-dict keys of the head: a checkpoint without them is refused by `from_pretrained`."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        r"""
        `PreTrainedModel.from_pretrained` with `use_safetensors=True` by default (pickled `.bin` weights are
        refused), Hub connection failures raised as [`HubConnectionError`], and no random head: a checkpoint that
        lacks the head (`class_embeddings`, `logit_scale`, `visual_projection.weight`), such as a
        `CLIPForImageClassification`, a `CLIPVisionModel` or a `CLIPModel`, raises [`MissingHeadError`] naming the
        missing keys. Build the model from those with [`ExplainingCLIPForImageClassification.from_classifier`] or
        [`SelfExplainingCLIPVision.from_clip`] (or [`hf_explvec.explaining_model`]).
        """
        remedy = (
            "For a CLIPForImageClassification use ExplainingCLIPForImageClassification.from_classifier(...); for a "
            "CLIPModel (zero-shot) use SelfExplainingCLIPVision.from_clip(..., class_names); hf_explvec."
            "explaining_model picks the right one."
        )
        return load_checked(cls, super().from_pretrained, args, kwargs, cls.HEAD_KEYS, remedy)

    @torch.no_grad()
    def _init_weights(self, module):
        if module is self:
            factor = self.config.vision_config.initializer_factor
            init.normal_(self.visual_projection.weight, std=self.config.vision_config.hidden_size**-0.5 * factor)
            init.copy_(self.class_embeddings, F.normalize(torch.randn_like(self.class_embeddings), dim=-1))
            init.constant_(self.logit_scale, self.config.logit_scale_init_value)

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    def _check_inputs(self, pixel_values: torch.Tensor, labels, shap_values) -> float:
        """Validate a forward call's inputs before anything runs; return the validated `config.alpha`.

        Types and shapes cost nothing. With `labels` (the loss path) the label values, the ignored rows and the
        finiteness of `pixel_values` and `shap_values` are checked too, in one device synchronisation: one NaN there
        would make the loss, hence every trained weight, NaN. Without labels (inference, e.g. the thousands of
        forward passes of Kernel SHAP) values are not scanned: a NaN pixel only gives that row NaN outputs.
        """
        check_pixel_values(pixel_values)
        vision = self.config.vision_config
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch_size, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width of this model), got {tuple(pixel_values.shape)}."
            )
        alpha = check_probability("config.alpha", self.config.alpha)
        batch_size, num_classes = pixel_values.shape[0], self.config.num_labels
        if labels is not None:
            if not isinstance(labels, torch.Tensor):
                raise TypeError(
                    f"labels must be a torch.LongTensor of shape ({batch_size},), got {type(labels).__name__}."
                )
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(
                    f"labels must hold integer class ids in [0, {num_classes - 1}] (dtype torch.long), got dtype "
                    f"{labels.dtype} with values {labels.flatten()[:8].tolist()}."
                )
            if tuple(labels.shape) != (batch_size,):
                raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}.")
        if shap_values is not None:
            if not isinstance(shap_values, torch.Tensor):
                raise TypeError(f"shap_values must be a torch.FloatTensor, got {type(shap_values).__name__}.")
            if tuple(shap_values.shape) != (batch_size, self.num_patches):
                raise ValueError(
                    f"shap_values must have shape (batch_size, num_patches) = ({batch_size}, {self.num_patches}), "
                    f"got {tuple(shap_values.shape)}."
                )
        if labels is None and shap_values is not None:
            raise ValueError("shap_values were given without labels: the attribution loss is taken at the label class.")
        if labels is None:
            return alpha
        if shap_values is None and alpha < 1.0:
            raise ValueError(
                f"config.alpha is {alpha} < 1, so the loss needs shap_values of shape "
                f"({batch_size}, {self.num_patches}) along with labels."
            )
        # The loss path: every value check in one synchronisation, the details looked up only on failure.
        labels = labels.to(pixel_values.device)  # a copy when it moves: the caller's tensor is never modified
        ignored = labels == IGNORE_INDEX
        out_of_range = ((labels < 0) | (labels >= num_classes)) & ~ignored
        flags = [out_of_range.any(), ignored.any(), ~torch.isfinite(pixel_values).all()]
        if shap_values is not None:
            flags.append(~torch.isfinite(shap_values.to(pixel_values.device)).all())
        bad_label, any_ignored, bad_pixels, *bad_shap = torch.stack(flags).tolist()
        if bad_label:
            row = int(out_of_range.nonzero()[0, 0])
            raise ValueError(
                f"labels must be class ids in [0, {num_classes - 1}] (or {IGNORE_INDEX} to leave a row out of the "
                f"cross-entropy), got {int(labels[row])} at row {row}."
            )
        if any_ignored and (shap_values is not None or alpha < 1.0):
            rows = ignored.nonzero().flatten().tolist()
            raise ValueError(
                f"labels hold {IGNORE_INDEX} (ignore_index) at rows {rows[:10]}, but the attribution loss "
                f"(config.alpha={alpha}{', shap_values given' if shap_values is not None else ''}) is taken at the "
                f"label class, so an ignored row has no SHAP target: drop these rows, or use alpha=1 without "
                f"shap_values."
            )
        if bad_pixels:
            check_finite_tensor(pixel_values, "pixel_values", unit="row")
        if bad_shap and bad_shap[0]:
            check_finite_tensor(shap_values, "shap_values", unit="row")
        return alpha

    def _classify(self, cls_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected [CLS] embeddings (N, P) -> logits (N, C), unit image embeddings (N, P), norms (N, 1)."""
        cls_norm = cls_embeds.norm(p=2, dim=-1, keepdim=True)
        image_embeds = cls_embeds / cls_norm
        logits = torch.matmul(image_embeds, self.class_embeddings.to(cls_embeds.dtype).t())
        return logits * self.logit_scale.exp().to(cls_embeds.dtype), image_embeds, cls_norm

    def _patch_norm(self, cls_norm: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        """What each image's patch attributions are divided by, (N, 1, 1): `config.patch_normalisation`."""
        if self.config.patch_normalisation == "cls":
            return cls_norm.unsqueeze(-1)
        # the mean L2 norm of the image's M projected patch tokens; as the [CLS] path, no epsilon (a zero norm
        # gives non-finite values rather than silently rescaled ones)
        return patch_embeds.norm(p=2, dim=-1).mean(dim=-1).view(-1, 1, 1)

    def logits_from_embeddings(
        self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""
        Class logits from input token embeddings, skipping the patch embedding: the path that embedding-level
        masking for Kernel SHAP takes (see [`hf_explvec.explain`]).

        Args:
            embeddings (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, hidden_size)`):
                [CLS] and patch embeddings with position embeddings added, as `vision_model.embeddings` returns them.
            attention_mask (`torch.FloatTensor` of shape `(batch_size, 1, 1, 1 + num_patches)`, *optional*):
                Additive mask: 0 for tokens to attend to, a large negative value for tokens to ignore.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_classes)`: the same logits `forward` gives.
        """
        vision = self.vision_model
        hidden = vision.encoder(inputs_embeds=vision.pre_layrnorm(embeddings), attention_mask=attention_mask)
        return self._classify(self.visual_projection(vision.post_layernorm(hidden.last_hidden_state[:, 0])))[0]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        shap_values: torch.Tensor | None = None,
        **kwargs,
    ) -> SelfExplainingOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images as prepared by `CLIPImageProcessor` (resized, center-cropped and normalised floats). Raw
                pixels (PIL images, numpy arrays, uint8 or other integer tensors) are refused with a `TypeError`: run
                the image processor first (the same policy as [`model_kernel_shap`] and [`patch_kernel_shap`]). With
                `labels`, NaN or infinite pixels are refused (`ValueError` naming the row).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)`; when given, the loss is computed. `-100` (the cross-entropy's
                `ignore_index`) leaves a row out of the cross-entropy, and is only accepted when there is no attribution
                loss (`config.alpha == 1` and no `shap_values`): an ignored row has no class to take the SHAP target
                at. Float labels are refused with a `TypeError`, ids out of range with a `ValueError`.
            shap_values (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                Kernel SHAP values of the label class's logit for each patch (row-major), the target of the
                attribution loss. Required with `labels` when `config.alpha < 1`; must be finite.
            kwargs:
                Passed to the vision tower, e.g. `output_hidden_states=True`, `output_attentions=True`.

        Returns:
            [`SelfExplainingOutput`].
        """
        kwargs.pop("return_dict", None)
        alpha = self._check_inputs(pixel_values, labels, shap_values)
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        tokens = self.visual_projection(self.vision_model.post_layernorm(vision_outputs.last_hidden_state))
        cls_embeds, patch_embeds = tokens[:, 0], tokens[:, 1:]
        logits, image_embeds, cls_norm = self._classify(cls_embeds)
        head = self.class_embeddings.to(tokens.dtype)
        scale = self.logit_scale.exp().to(tokens.dtype)
        # (B, M, P) @ (P, C) -> (B, M, C) -> (B, C, M)
        patch_attributions = torch.matmul(patch_embeds, head.t()).transpose(1, 2)
        patch_attributions = patch_attributions * (scale / self.num_patches) / self._patch_norm(cls_norm, patch_embeds)

        loss = ce_loss = attribution_loss = None
        if labels is not None:
            labels = labels.to(logits.device, torch.long)
            ce_loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            loss = ce_loss if alpha == 1.0 else alpha * ce_loss
            if shap_values is not None:
                index = labels.view(-1, 1, 1).expand(-1, 1, self.num_patches)
                explained = patch_attributions.gather(1, index).squeeze(1)
                attribution_loss = F.mse_loss(explained.float(), shap_values.to(explained.device, torch.float32))
                if alpha < 1.0:
                    loss = loss + (1.0 - alpha) * attribution_loss

        return SelfExplainingOutput(
            loss=loss,
            logits=logits,
            patch_attributions=patch_attributions,
            image_embeds=image_embeds,
            ce_loss=ce_loss,
            attribution_loss=attribution_loss,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    @classmethod
    def from_clip(
        cls,
        clip: CLIPModel | str,
        class_names: list[str],
        templates: tuple[str, ...] | list[str] = DEFAULT_TEMPLATES,
        tokenizer=None,
        class_embeddings: torch.Tensor | None = None,
        alpha: float = 1.0,
        **from_pretrained_kwargs,
    ) -> SelfExplainingCLIPVision:
        r"""
        Build a self-explaining classifier from a CLIP model: copy its vision tower and visual projection, and make
        the head from its text tower (or from precomputed `class_embeddings`).

        Built this way, the model's `logits` are exactly the CLIP model's zero-shot `logits_per_image` for the
        prompts (with one template; with several, the prompt-ensembled zero-shot logits).

        Args:
            clip ([`~transformers.CLIPModel`] or `str`):
                A CLIP model, or a name or path for `CLIPModel.from_pretrained`.
            class_names (`list[str]`):
                Distinct class names, in label order.
            templates (`Sequence[str]`, *optional*, defaults to `("a photo of a {}.",)`):
                Prompt templates, each with one `{}`; embeddings are averaged over them.
            tokenizer (*optional*):
                The CLIP tokenizer. Loaded from `clip` when it is a name or path; required otherwise, unless
                `class_embeddings` is given.
            class_embeddings (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
                Precomputed text embeddings; L2-normalised here. The text tower is not used.
            alpha (`float`, *optional*, defaults to 1.0):
                `config.alpha`, the cross-entropy weight of the loss.
            from_pretrained_kwargs:
                Passed to `CLIPModel.from_pretrained` and `AutoTokenizer.from_pretrained` (e.g. `revision`).

        Returns:
            [`SelfExplainingCLIPVision`] in eval mode, in the CLIP model's dtype and on its device.
        """
        validate_class_names(class_names)
        if isinstance(clip, (str, bytes)) or hasattr(clip, "__fspath__"):
            name_or_path = str(clip)
            clip = CLIPModel.from_pretrained(name_or_path, **from_pretrained_kwargs)
            if tokenizer is None and class_embeddings is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(name_or_path, **from_pretrained_kwargs)
        if not isinstance(clip, CLIPModel):
            raise TypeError(f"clip must be a CLIPModel or a name or path of one, got {type(clip).__name__}.")
        expected_shape = (len(class_names), clip.config.projection_dim)
        if class_embeddings is None:
            if tokenizer is None:
                raise ValueError(
                    "from_clip needs a tokenizer (or precomputed class_embeddings) for a CLIPModel object."
                )
            class_embeddings = build_class_embeddings(clip, tokenizer, class_names, templates)
        elif not isinstance(class_embeddings, torch.Tensor) or tuple(class_embeddings.shape) != expected_shape:
            got = (
                tuple(class_embeddings.shape) if isinstance(class_embeddings, torch.Tensor) else type(class_embeddings)
            )
            raise ValueError(
                f"class_embeddings must be a tensor of shape (num_classes, projection_dim) = {expected_shape}, "
                f"got {got}."
            )
        if not torch.isfinite(class_embeddings).all() or (class_embeddings.norm(dim=-1) == 0).any():
            raise ValueError("class_embeddings must be finite with no all-zero row.")

        config = SelfExplainingCLIPVisionConfig(
            vision_config=clip.config.vision_config.to_dict(),
            projection_dim=clip.config.projection_dim,
            class_names=list(class_names),
            alpha=alpha,
            logit_scale_init_value=float(clip.logit_scale.detach()),
            clip_name_or_path=clip.config._name_or_path or None,
        )
        config._attn_implementation = clip.config._attn_implementation
        parameter = clip.visual_projection.weight
        model = cls(config).to(device=parameter.device, dtype=parameter.dtype)
        model.vision_model.load_state_dict(clip.vision_model.state_dict())
        model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        with torch.no_grad():
            model.class_embeddings.copy_(F.normalize(class_embeddings.float(), dim=-1))
            model.logit_scale.copy_(clip.logit_scale.detach())
        return model.eval()


def attribution_map(outputs: SelfExplainingOutput, target: int | torch.Tensor | None = None) -> torch.Tensor:
    r"""
    The patch attributions of one class per image, as a `(grid_size, grid_size)` map.

    Args:
        outputs ([`SelfExplainingOutput`]):
            The output of a [`SelfExplainingCLIPVision`] forward pass.
        target (`int` or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The class to explain for each image; the predicted class (argmax of `logits`) when not given.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, grid_size, grid_size)`.
    """
    attributions = outputs.patch_attributions
    batch_size, num_classes, num_patches = attributions.shape
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ValueError(f"patch_attributions cover {num_patches} patches, which is not a square grid.")
    if target is None:
        target = outputs.logits.argmax(dim=-1)
    target = check_targets(target, batch_size, num_classes, device=attributions.device)
    index = target.view(-1, 1, 1).expand(-1, 1, num_patches)
    return attributions.gather(1, index).view(batch_size, grid, grid)


__all__ = ["MissingHeadError", "SelfExplainingCLIPVision", "SelfExplainingOutput", "attribution_map"]
