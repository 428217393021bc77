"""`hf-explvec explain` and `hf-explvec apply`: the command-line contract of issue 10 (item 6), through LocalHub."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from practitioner_world import (
    CLASSES,
    CLASSIFIER,
    FOREIGN_BASE,
    FOREIGN_VECTOR,
    LAM,
    VECTOR,
    publish_world,
    write_images,
)
from transformers import AutoModelForImageClassification, pipeline

import hf_explvec
from hf_explvec.cli import main
from hf_explvec.explain import explain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def world(local_hub):
    return publish_world(foreign=False)


@pytest.fixture
def foreign_world(local_hub):
    return publish_world(foreign=True)


@pytest.fixture
def images(tmp_path):
    return [path for path, _ in write_images(tmp_path / "images", 3)]


def _fails(argv, capsys) -> tuple[int, str]:
    """Run the command; it must exit non-zero with exactly one error line and no traceback."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars may share stderr
    assert len(errors) == 1 and errors[0].startswith("hf-explvec: error: "), err
    assert exit.value.code != 0
    return exit.value.code, errors[0]


# --------------------------------------------------------------------------------------------------------- explain
def test_explain_writes_the_json_contract_and_one_overlay_per_image(world, images, tmp_path, capsys):
    out = tmp_path / "out"
    main(["explain", *images, "--model", CLASSIFIER, "--vector", VECTOR, "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert f"{CLASSIFIER} + {LAM:g} × {VECTOR}" in printed
    entries = json.loads((out / "explanations.json").read_text())
    assert isinstance(entries, list) and [entry["image"] for entry in entries] == images
    reference = explain(hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR), images)
    for entry, expected in zip(entries, reference, strict=True):
        assert {"image", "label", "score", "attributions"} <= entry.keys()
        assert entry["label"] == expected.label and entry["label"] in CLASSES
        assert entry["score"] == pytest.approx(expected.score, abs=1e-6)
        grid = torch.tensor(entry["attributions"])
        assert grid.shape == (4, 4)  # g × g, row-major
        torch.testing.assert_close(grid, expected.attributions, rtol=0, atol=1e-6)
        assert Image.open(entry["overlay"]).format == "PNG"
    assert len(list(out.glob("*.png"))) == len(images)


def test_explain_with_a_given_lam_and_a_pinned_vector_revision(world, images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", images[0], "--model", CLASSIFIER, "--vector", VECTOR, "--revision", world["vector"]]
    main([*argv, "--lam", "0.25", "--output-dir", str(out)])
    [entry] = json.loads((out / "explanations.json").read_text())
    expected = explain(hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR, lam=0.25), [images[0]])[0]
    torch.testing.assert_close(torch.tensor(entry["attributions"]), expected.attributions, rtol=0, atol=1e-6)
    assert "0.25 ×" in capsys.readouterr().out


@pytest.mark.parametrize("labelled", [True, False], ids=["class-folders", "glob"])
def test_explain_lam_auto_chooses_on_validation_images(world, images, tmp_path, capsys, labelled):
    validation = tmp_path / "validation"
    write_images(validation, 4, seed=9, by_class=labelled)
    source = str(validation) if labelled else str(validation / "*.png")
    out = tmp_path / "out"
    main([
        "explain", *images, "--model", CLASSIFIER, "--vector", VECTOR, "--lam", "auto", "--validation-images", source,
        "--lambdas", "0", "0.5", "--kernel-shap-samples", "64", "--output-dir", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "chosen λ = " in printed
    chosen = float(printed.split("chosen λ = ")[1].split()[0])
    assert chosen in (0.0, 0.5)
    assert len(json.loads((out / "explanations.json").read_text())) == len(images)


def test_lam_auto_with_a_single_class_folder_keeps_its_labels(world, images, tmp_path, capsys):
    """datasets infers no labels from one class folder unless asked (drop_labels=False); hidden folders are skipped."""
    validation = tmp_path / "validation"
    for path, label in write_images(tmp_path / "all", 4, seed=9, by_class=True):
        if label == 0:
            target = validation / Path(path).parent.name / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            Path(path).rename(target)
    (validation / ".ipynb_checkpoints").mkdir()
    main([
        "explain", *images, "--model", CLASSIFIER, "--vector", VECTOR, "--lam", "auto", "--validation-images",
        str(validation), "--lambdas", "0", "0.5", "--kernel-shap-samples", "64", "--output-dir", str(tmp_path / "o"),
    ])  # fmt: skip
    assert "chosen λ = " in capsys.readouterr().out


def test_explain_a_zero_shot_clip_with_class_names(world, images, tmp_path):
    out = tmp_path / "out"
    main([
        "explain", *images, "--model", "org/base-clip", "--class-names", ",".join(CLASSES), "--vector", VECTOR,
        "--output-dir", str(out),
    ])  # fmt: skip
    entries = json.loads((out / "explanations.json").read_text())
    zero_shot = hf_explvec.from_pretrained_with_vector("org/base-clip", VECTOR, class_names=CLASSES)
    for entry, expected in zip(entries, explain(zero_shot, images), strict=True):
        assert entry["label"] == expected.label
        torch.testing.assert_close(torch.tensor(entry["attributions"]), expected.attributions, rtol=0, atol=1e-6)


def test_explain_help_says_how_lam_auto_works(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["explain", "--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--validation-images" in text and "one subfolder per class" in text and "glob" in text


def test_new_commands_answer_help_without_importing_torch():
    code = (
        "import sys, hf_explvec_cli\n"
        "for command in ('explain', 'apply'):\n"
        "    try:\n        hf_explvec_cli.main([command, '--help'])\n"
        "    except SystemExit as exit:\n        assert exit.code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'hf_explvec') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: hf-explvec explain" in done.stdout and "usage: hf-explvec apply" in done.stdout
    assert done.stdout.strip().endswith("[]")


# ----------------------------------------------------------------------------------------------------------- apply
def test_apply_saves_a_folder_that_loads_back_with_processor_and_card(world, tmp_path, capsys):
    folder = tmp_path / "explained"
    main(["apply", "--model", CLASSIFIER, "--vector", VECTOR, "--lam", "0.4", "--save-to", str(folder)])
    assert "saved the explained model" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert loaded.config.explainability == {
        "model": CLASSIFIER,
        "model_revision": world["classifier"],
        "vector": VECTOR,
        "vector_revision": world["vector"],
        "lam": 0.4,
    }
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == [CLASSIFIER, VECTOR] and card.data.base_model_relation == "merge"


def test_apply_pushes_a_model_that_pipeline_loads_by_name(world, images, capsys):
    main(["apply", "--model", CLASSIFIER, "--vector", VECTOR, "--push-to", "me/explained"])
    assert "pushed the explained model" in capsys.readouterr().out
    classify = pipeline("image-classification", model="me/explained")
    reference = explain(hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR), images)
    assert [classify(path, top_k=1)[0]["label"] for path in images] == [e.label for e in reference]


def test_apply_keeps_the_classifiers_own_image_processor(world, tmp_path):
    from transformers import AutoImageProcessor

    from hf_explvec.data.images import clip_image_processor

    own = clip_image_processor(32)
    own.image_mean = [0.5, 0.5, 0.5]  # not CLIP's: the explained model must keep the classifier's preprocessing
    own.push_to_hub(CLASSIFIER)
    main(["apply", "--model", CLASSIFIER, "--vector", VECTOR, "--save-to", str(tmp_path / "saved")])
    main(["apply", "--model", CLASSIFIER, "--vector", VECTOR, "--push-to", "me/explained"])
    for where in (tmp_path / "saved", "me/explained"):
        assert list(AutoImageProcessor.from_pretrained(where).image_mean) == [0.5, 0.5, 0.5]


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("command", ["explain", "explain-auto", "apply"])
def test_a_foreign_base_is_refused_in_one_line_naming_it(foreign_world, images, tmp_path, capsys, command):
    out = tmp_path / "out"
    write_images(tmp_path / "validation", 2, seed=4, by_class=True)
    auto = ["--lam", "auto", "--validation-images", str(tmp_path / "validation"), "--kernel-shap-samples", "64"]
    argv = {
        "explain": ["explain", *images, "--output-dir", str(out)],
        "explain-auto": ["explain", *images, "--output-dir", str(out), *auto],
        "apply": ["apply", "--save-to", str(out)],
    }[command] + ["--model", CLASSIFIER, "--vector", FOREIGN_VECTOR]
    code, line = _fails(argv, capsys)
    assert code == 2 and "BaseModelMismatchError" in line and FOREIGN_BASE in line and "--no-base-check" in line
    assert not out.exists()
    main([*argv, "--no-base-check"])  # the explicit override
    assert out.exists()


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--lam", "auto"], 2, "--validation-images"),
        (["--validation-images", "x"], 2, "--lam auto"),
        (["--class-names", "a,,b"], 2, "--class-names"),
    ],
)
def test_explain_bad_options_are_one_line(world, images, tmp_path, capsys, extra, code, needle):
    got, line = _fails(
        ["explain", *images, "--model", CLASSIFIER, "--vector", VECTOR, "--output-dir", str(tmp_path / "o"), *extra],
        capsys,
    )
    assert got == code and needle in line
    assert not (tmp_path / "o").exists()


def test_explain_missing_or_broken_images_are_one_line(world, images, tmp_path, capsys):
    code, line = _fails(["explain", str(tmp_path / "nope.png"), "--model", CLASSIFIER, "--vector", VECTOR], capsys)
    assert code == 1 and "nope.png" in line
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    argv = ["explain", str(broken), "--model", CLASSIFIER, "--vector", VECTOR, "--output-dir", str(tmp_path / "o")]
    code, line = _fails(argv, capsys)
    assert code == 2 and "broken.png" in line


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["--model", "me/no-such-model", "--vector", VECTOR], 1, "me/no-such-model"),
        (["--model", CLASSIFIER, "--vector", "org/no-such-vector"], 1, "org/no-such-vector"),
        (["--model", "org/base-clip", "--vector", VECTOR], 2, "class_names"),  # no head: never a random one
        (["--model", CLASSIFIER, "--vector", VECTOR, "--lam", "nan"], 2, "finite"),
    ],
)
def test_apply_bad_input_is_one_line(world, tmp_path, capsys, argv, code, needle):
    got, line = _fails(["apply", *argv, "--save-to", str(tmp_path / "o")], capsys)
    assert got == code and needle in line
    assert not (tmp_path / "o").exists()


def test_apply_without_a_recommended_lam_needs_lam(world, tmp_path, capsys):
    from practitioner_world import BASE, publish_vector
    from transformers import CLIPModel

    publish_vector(CLIPModel.from_pretrained(BASE), "org/no-lam", lam=None)
    code, line = _fails(["apply", "--model", CLASSIFIER, "--vector", "org/no-lam", "--save-to", str(tmp_path)], capsys)
    assert code == 2 and "recommended_lam" in line


def test_argument_errors(capsys):
    for argv, needle in [
        (["explain", "a.png", "--model", "m", "--vector", "v", "--lam", "lots"], "--lam"),
        (["apply", "--model", "m", "--vector", "v"], "--save-to"),
        (["apply", "--model", "m", "--vector", "v", "--save-to", "d", "--push-to", "r"], "not allowed"),
        (["explain", "--model", "m", "--vector", "v"], "IMAGE"),
    ]:
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2 and needle in capsys.readouterr().err
