"""Tests for hf_explvec.explain: explain() on every kind of input, upsampling geometry, overlays, bad input."""

import json

import datasets
import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPForImageClassification, CLIPImageProcessor

from hf_explvec import SelfExplainingCLIPVision, attribution_map
from hf_explvec.data import image_processor_for
from hf_explvec.explain import Explanation, explain, overlay, save_overlays, upsample_attributions, view_box
from hf_explvec.testing import tiny_clip_config, tiny_clip_model, tiny_clip_tokenizer

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(), CLASSES, tokenizer=tiny_clip_tokenizer())


def _images(count=4, size=(32, 32), seed=0):
    """Random RGB images of `size` (width, height): different enough that the tiny model's outputs differ."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def _reference(model, images, processor=None):
    """What explain must return, computed by hand: the processor, one forward pass, softmax, attribution_map."""
    processor = processor or image_processor_for(model)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(pixels)
    return pixels, outputs.logits.softmax(-1), attribution_map(outputs)


def _same(explanations, probabilities, maps):
    assert [e.label_id for e in explanations] == probabilities.argmax(-1).tolist()
    assert [e.label for e in explanations] == [CLASSES[i] for i in probabilities.argmax(-1).tolist()]
    torch.testing.assert_close(torch.tensor([e.score for e in explanations]), probabilities.max(-1).values)
    torch.testing.assert_close(torch.stack([e.attributions for e in explanations]), maps)


# ------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------


def test_pil_images_give_the_models_prediction_score_and_attribution_grid(model):
    images = _images()
    _, probabilities, maps = _reference(model, images)
    explanations = explain(model, images, batch_size=3)  # two batches
    assert len(explanations) == 4 and all(isinstance(e, Explanation) for e in explanations)
    _same(explanations, probabilities, maps)
    assert [e.index for e in explanations] == [0, 1, 2, 3]
    assert all(e.target == e.label_id and e.target_label == e.label for e in explanations)
    assert all(e.attributions.shape == (4, 4) and e.attributions.dtype == torch.float32 for e in explanations)
    assert all(e.pixel_attributions is None and e.image is None for e in explanations)
    assert explain(model, images[1])[0].attributions.equal(explanations[1].attributions)  # one image, not a list


def test_paths_tensors_arrays_and_datasets_agree(model, tmp_path):
    images = _images(3)
    pixels, probabilities, maps = _reference(model, images)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    by_path = explain(model, [str(paths[0]), paths[1], paths[2]])
    _same(by_path, probabilities, maps)
    assert [e.image for e in by_path] == [str(p) for p in paths]
    _same(explain(model, pixels), probabilities, maps)  # processed (B, 3, H, W): the processor is not run
    _same(explain(model, list(pixels)), probabilities, maps)  # (3, H, W) each
    raw = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images])
    _same(explain(model, raw), probabilities, maps)  # uint8, channels first
    _same(explain(model, [np.asarray(image) for image in images]), probabilities, maps)  # uint8 numpy, channels last
    _same(explain(model, [images[0], str(paths[1]), pixels[2]]), probabilities, maps)  # mixed in one batch

    split = datasets.Dataset.from_dict({"label": [0, 1, 2], "picture": [str(p) for p in paths]})
    split = split.cast_column("picture", datasets.Image())
    from_split = explain(model, split, batch_size=2)
    _same(from_split, probabilities, maps)
    assert [e.image for e in from_split] == [str(p) for p in paths]  # decoded files keep their path

    two = split.add_column("other", [str(p) for p in paths]).cast_column("other", datasets.Image())
    with pytest.raises(ValueError, match="2 columns .*image_column="):
        explain(model, two)
    _same(explain(model, two, image_column="other"), probabilities, maps)
    with pytest.raises(ValueError, match="'nope' is not a column"):
        explain(model, two, image_column="nope")
    with pytest.raises(TypeError, match="DatasetDict.*one split"):
        explain(model, datasets.DatasetDict({"test": split}))


def test_a_path_is_read_as_pipelines_read_it_exif_orientation_applied(model, tmp_path):
    from transformers.image_utils import load_image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    _images(1, (48, 32))[0].save(path, exif=exif)
    [explanation] = explain(model, path)
    assert explanation.image_size == (48, 32)  # (height, width) as displayed: portrait
    _, probabilities, maps = _reference(model, [load_image(str(path))])
    _same([explanation], probabilities, maps)


def test_target_explains_the_given_class_and_keeps_the_prediction(model):
    images = _images(3)
    pixels, probabilities, _ = _reference(model, images)
    with torch.no_grad():
        outputs = model(pixels)
    for target in (2, [0, 2, 1], torch.tensor([1, 1, 0])):
        explanations = explain(model, images, target=target, batch_size=2)
        expected = attribution_map(outputs, torch.as_tensor(target).expand(3))
        torch.testing.assert_close(torch.stack([e.attributions for e in explanations]), expected)
        assert [e.target for e in explanations] == torch.as_tensor(target).expand(3).tolist()
        assert [e.target_label for e in explanations] == [CLASSES[i] for i in torch.as_tensor(target).expand(3)]
        assert [e.label_id for e in explanations] == probabilities.argmax(-1).tolist()


def test_training_mode_and_weights_are_left_as_they_were(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        explain(model, _images(2))
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    explain(model, _images(2))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_image_processor_saved_with_the_model_is_used(model, tmp_path):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])  # fmt: skip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = SelfExplainingCLIPVision.from_pretrained(tmp_path)
    images = _images(2)
    _, probabilities, maps = _reference(loaded, images, processor)
    _same(explain(loaded, images), probabilities, maps)
    _same(explain(model, images, image_processor=processor), probabilities, maps)
    default = explain(model, images)  # CLIP's normalisation: other inputs, other attributions
    assert not torch.allclose(default[0].attributions, maps[0])


def test_image_processor_pushed_with_the_model_is_used_at_its_revision(model, local_hub):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])  # fmt: skip
    first = model.push_to_hub("org/tiny", image_processor=processor)
    images = _images(2)
    _, probabilities, maps = _reference(model, images, processor)
    loaded = SelfExplainingCLIPVision.from_pretrained("org/tiny")
    _same(explain(loaded, images), probabilities, maps)  # found by the model's name_or_path
    model.push_to_hub("org/tiny", image_processor=image_processor_for(model))  # a later commit: CLIP's processor
    # The commit a model was loaded from, where recorded (hf_explvec.load_explaining_model records it in
    # config._commit_hash; transformers 5 does not), pins the processor to the same commit.
    loaded.config._commit_hash = first.oid
    _same(explain(loaded, images), probabilities, maps)
    del loaded.config._commit_hash
    _, probabilities, maps = _reference(model, images)
    _same(explain(loaded, images), probabilities, maps)  # main's processor now


# ------------------------------------------------------------------------------------------------------
# Upsampling geometry
# ------------------------------------------------------------------------------------------------------


def test_upsampling_a_square_image_is_bilinear_interpolation(model):
    [explanation] = explain(model, _images(1, (64, 64)), upsample=True)
    assert explanation.view_box == (0.0, 0.0, 64.0, 64.0) and explanation.image_size == (64, 64)
    expected = F.interpolate(explanation.attributions[None, None], size=(64, 64), mode="bilinear")[0, 0]
    torch.testing.assert_close(explanation.pixel_attributions, expected)
    torch.testing.assert_close(explanation.upsampled(), expected)


def test_upsampling_covers_only_the_centre_crop_the_model_saw(model):
    # CLIP's processor resizes the short side 64 -> 32 (96 x 64 -> 48 x 32) and crops the centre 32 x 32:
    # the model saw columns 16..80 of the original image; the other pixels cannot affect it.
    [explanation] = explain(model, _images(1, (96, 64)), upsample=True)
    assert explanation.image_size == (64, 96)
    assert explanation.view_box == (16.0, 0.0, 80.0, 64.0)
    pixels = explanation.pixel_attributions
    assert pixels.shape == (64, 96)
    assert pixels[:, :16].abs().max() == 0 and pixels[:, 80:].abs().max() == 0
    inside = F.interpolate(explanation.attributions[None, None], size=(64, 64), mode="bilinear")[0, 0]
    torch.testing.assert_close(pixels[:, 16:80], inside)
    # Portrait, and a processor that only resizes (no crop): the grid covers the whole image.
    stretch = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    assert view_box(image_processor_for(model), 90, 30) == (0.0, 30.0, 30.0, 60.0)
    assert view_box(stretch, 90, 30) == (0.0, 0.0, 30.0, 90.0)
    [stretched] = explain(model, _images(1, (30, 90)), image_processor=stretch, upsample=True)
    expected = F.interpolate(stretched.attributions[None, None], size=(90, 30), mode="bilinear")[0, 0]
    torch.testing.assert_close(stretched.pixel_attributions, expected)


def test_upsample_attributions_of_a_box_reaching_outside_the_image():
    grid = torch.arange(4.0).view(2, 2)
    pixels = upsample_attributions(grid, (-2.0, 0.0, 2.0, 4.0), (4, 2))  # the left half of the grid is padding
    expected = F.interpolate(grid[None, None], size=(4, 4), mode="bilinear")[0, 0, :, 2:]
    torch.testing.assert_close(pixels, expected)
    # Any box: torch's grid_sample (border padding) at the pixel centres, zeroed outside the box.
    grid = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    left, top, right, bottom = 3.3, -1.7, 20.1, 15.2
    xs = (torch.arange(24) + 0.5 - left) / (right - left)
    ys = (torch.arange(18) + 0.5 - top) / (bottom - top)
    x, y = torch.meshgrid(xs * 2 - 1, ys * 2 - 1, indexing="xy")
    sampled = F.grid_sample(grid[None, None], torch.stack([x, y], -1)[None], padding_mode="border", align_corners=False)
    inside = ((ys >= 0) & (ys <= 1))[:, None] & ((xs >= 0) & (xs <= 1))[None, :]
    pixels = upsample_attributions(grid, (left, top, right, bottom), (18, 24))
    torch.testing.assert_close(pixels, sampled[0, 0] * inside)


# ------------------------------------------------------------------------------------------------------
# Overlays
# ------------------------------------------------------------------------------------------------------


def test_save_overlays_writes_one_png_per_image_with_label_and_score(model, tmp_path):
    images = _images(2, (48, 32))
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"photo {i}.png")
        image.save(paths[-1])
    backend = matplotlib.get_backend()
    explanations = explain(model, [str(p) for p in paths])
    written = save_overlays(explanations, output_dir=tmp_path / "out")  # images found by their paths
    assert written == [tmp_path / "out" / "0000-photo-0.png", tmp_path / "out" / "0001-photo-1.png"]
    for path in written:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size[0] > png.size[1] > 200  # a landscape image: a wide figure
            size = png.size
    from_images = save_overlays(explanations, images, tmp_path / "again", dpi=50)
    with Image.open(from_images[0]) as png:
        assert abs(png.size[0] - size[0] / 2) <= 1 and abs(png.size[1] - size[1] / 2) <= 1
    assert matplotlib.get_backend() == backend  # no global state changed

    figure = overlay(explanations[0], images[0])
    assert figure._suptitle.get_text() == f"{explanations[0].label} ({explanations[0].score:.1%})"
    heat = figure.axes[1].get_images()[-1]
    low, high = heat.get_clim()
    assert low == -high and high == pytest.approx(float(explanations[0].upsampled().abs().max()))
    assert heat.get_cmap().name == "RdBu_r"
    np.testing.assert_allclose(heat.get_array(), explanations[0].upsampled().numpy())
    assert len(figure.axes[1].patches) == 1  # the dashed box of the centre crop

    [other] = explain(model, images[0], target=(explanations[0].label_id + 1) % 3)
    assert "attributions for" in overlay(other, images[0]).axes[1].get_title()
    pixels = image_processor_for(model)(images=images[0], return_tensors="pt")["pixel_values"]
    [processed] = explain(model, pixels)  # drawn on the processed pixels, rescaled to [0, 1]
    [path] = save_overlays([processed], pixels, tmp_path / "processed")
    assert path.name == "0000.png" and path.is_file()


def test_to_dict_is_json_with_a_row_major_grid(model):
    [explanation] = explain(model, _images(1))
    record = json.loads(json.dumps(explanation.to_dict()))
    assert record["label"] == explanation.label and record["score"] == explanation.score
    assert record["image"] is None
    assert torch.tensor(record["attributions"]).equal(explanation.attributions)


# ------------------------------------------------------------------------------------------------------
# Other explaining models
# ------------------------------------------------------------------------------------------------------


def test_a_model_without_patch_attributions_is_refused_by_class_name():
    classifier = CLIPForImageClassification(tiny_clip_config()).eval()
    classifier.config.id2label = {0: "a", 1: "b"}
    with pytest.raises(TypeError, match="CLIPForImageClassification is not an explaining model"):
        explain(classifier, _images(1))
    with pytest.raises(TypeError, match="nn.Module"):
        explain(lambda pixels: pixels, _images(1))


# ------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_typed_error_naming_it(model, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        explain(model, [])
    with pytest.raises(ValueError, match="no rows"):
        explain(model, datasets.Dataset.from_dict({"image": []}))
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        explain(model, [_images(1)[0], str(missing)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        explain(model, broken)
    with pytest.raises(ValueError, match=r"pixel_values of shape \(3, 16, 16\).*\(3, 32, 32\)"):
        explain(model, torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"\(3, H, W\).*got shape \(2, 4, 32, 32\)"):
        explain(model, torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"uint8 tensor.*got shape \(5, 32, 32\)"):
        explain(model, torch.zeros(5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        explain(model, torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="torch.int64 is ambiguous"):
        explain(model, torch.zeros(3, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="float32 is ambiguous"):
        explain(model, np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(TypeError, match=r"images\[1\].*int"):
        explain(model, [_images(1)[0], 3])
    with pytest.raises(TypeError, match="images must be"):
        explain(model, 3)
    with pytest.raises(ValueError, match=r"target must hold class ids in \[0, 2\]"):
        explain(model, _images(2), target=3)
    with pytest.raises(ValueError, match=r"target must be an int or have shape \(2,\)"):
        explain(model, _images(2), target=[0, 1, 2])
    with pytest.raises(TypeError, match="target must hold integer class ids"):
        explain(model, _images(1), target=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        explain(model, _images(1), batch_size=0)
    with pytest.raises(ValueError, match="image_column= only applies"):
        explain(model, _images(1), image_column="image")

    [explanation] = explain(model, _images(1, (48, 32)))
    with pytest.raises(ValueError, match="does not know its image file"):
        overlay(explanation)
    with pytest.raises(ValueError, match="32×32 pixels but explanation 0 was made for an image of 32×48"):
        overlay(explanation, _images(1)[0])
    with pytest.raises(ValueError, match="alpha"):
        overlay(explanation, _images(1, (48, 32))[0], alpha=2)
    with pytest.raises(ValueError, match="1 explanations but 2 images"):
        save_overlays([explanation], _images(2, (48, 32)), tmp_path)
    with pytest.raises(ValueError, match="nothing to draw"):
        save_overlays([], None, tmp_path)


def test_explains_a_users_classifier_through_its_own_head(tmp_path):
    from hf_explvec import ExplainingCLIPForImageClassification

    config = tiny_clip_config()
    config.id2label = {0: "cat", 1: "dog"}
    classifier = CLIPForImageClassification(config).eval()
    model = ExplainingCLIPForImageClassification.from_classifier(classifier)
    images = _images(3, (40, 32))
    pixels = image_processor_for(model)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = classifier(pixels).logits
        attributions = model(pixels).patch_attributions
    explanations = explain(model, images, upsample=True)
    predicted = logits.argmax(-1)
    assert [e.label for e in explanations] == [config.id2label[int(i)] for i in predicted]
    torch.testing.assert_close(torch.tensor([e.score for e in explanations]), logits.softmax(-1).max(-1).values)
    grids = torch.stack([e.attributions for e in explanations])
    torch.testing.assert_close(grids, attributions[torch.arange(3), predicted].view(3, 4, 4))
    # the classifier's own head per patch: the grid sums to the logit minus the bias
    torch.testing.assert_close(grids.sum((1, 2)), logits.max(-1).values - classifier.classifier.bias[predicted])
    assert explanations[0].pixel_attributions.shape == (32, 40) and explanations[0].view_box == (4.0, 0.0, 36.0, 32.0)
    assert len(save_overlays(explanations, images, tmp_path)) == 3
