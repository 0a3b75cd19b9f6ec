"""Lean serving bundles (vljepa.serving): the same answers as the full model, with only torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vljepa
from conftest import ROOT, TINY_PREDICTOR
from vljepa.cli import main
from vljepa.serving import NotInBundleError, ServingModel
from vljepa.serving.lean_cnn import LeanTransform, _transform_spec

QUESTIONS = ["what color is the shape?", "what shape is in the image?", "is there a red shape?",
             "is there not a blue shape in the image?", "is a circle present?",
             "what is the color of the rectangle?"]
CANDIDATES = ["red", "blue", "green", "circle", "rectangle", "triangle", "yes", "no"]


@pytest.fixture(scope="module")
def images():
    import easy_vqa
    paths = easy_vqa.get_test_image_paths()  # image id -> file
    return [paths[i] for i in range(3)]


def _saved(model, d: Path) -> Path:
    """``model`` saved to ``d``: exports read a fresh copy, so the session model's text memo
    (which other tests' exact comparisons rely on) stays as it was."""
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    src = _saved(model, tmp_path_factory.mktemp("model"))
    vljepa.export_serving(src, d, QUESTIONS + QUESTIONS[:2], CANDIDATES)  # duplicates: once
    return d


@pytest.fixture(scope="module")
def ternary_bundle(tmp_path_factory):
    """The released model's predictor kind (cached_text: MiniLM's contextual query states),
    ternary and packed."""
    torch.manual_seed(0)
    fp = vljepa.create_model({"predictor": {**TINY_PREDICTOR, "kind": "cached_text"}}).eval()
    d = tmp_path_factory.mktemp("serve-ternary")
    vljepa.export_serving(vljepa.quantize(fp), d, QUESTIONS, CANDIDATES)
    return d


def _pairs(images):
    """Each image with each question: (images, questions), 18 pairs."""
    return ([im for im in images for _ in QUESTIONS], [q for _ in images for q in QUESTIONS])


@pytest.mark.parametrize("which", ["bundle", "ternary_bundle"])
def test_lean_answers_equal_the_full_models(which, images, request):
    d = request.getfixturevalue(which)
    full, lean = vljepa.load(d), vljepa.load(d, lean=True)
    assert isinstance(lean, ServingModel)
    assert lean.questions == QUESTIONS and lean.candidates == CANDIDATES
    ims, qs = _pairs(images)
    fa, fs = full.answer(ims, qs, CANDIDATES)
    la, ls = lean.answer(ims, qs)
    assert la == fa
    assert torch.allclose(ls, fs, atol=1e-5)
    assert len(set(la)) > 1  # not a degenerate constant answer
    # the same batches on both sides (a batch pads its questions to its longest)
    torch.testing.assert_close(lean.predict(ims, qs, batch_size=5),
                               full.predict(ims, qs, batch_size=5), atol=1e-5, rtol=0)
    # a subset of the stored candidates, in another order
    sub = ["no", "triangle", "red", "yes"]
    assert lean.answer(ims[:6], qs[:6], sub)[0] == full.answer(ims[:6], qs[:6], sub)[0]
    assert torch.equal(lean.visual_tokens(ims[:3]), full.visual_tokens(ims[:3]))


def test_ternary_bundle_keeps_the_predictor_packed(ternary_bundle):
    lean = vljepa.load(ternary_bundle, lean=True)
    assert lean.config.predictor.kind == "cached_text"
    packed = [n for n, _ in lean.predictor.named_buffers() if n.endswith("weight_packed")]
    assert packed
    assert not any(n.endswith("qkv.weight") for n, _ in lean.predictor.named_parameters())
    assert all(b.dtype == torch.uint8 for n, b in lean.predictor.named_buffers()
               if n.endswith("weight_packed"))


def test_lean_preprocessing_equals_the_x_encoders(model):
    lean = LeanTransform(_transform_spec(model.x_encoder.transform))
    g = np.random.default_rng(1)
    for h, w in ((64, 64), (480, 640), (641, 479), (65, 300), (3, 5)):
        img = Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(lean(img), model.x_encoder.transform(img)), (h, w)


def test_server_preprocessing_per_batch_equals_the_x_encoders(model, bundle):
    """The HTTP server resizes and crops per request (uint8) and normalises per batch: the same
    bits as the model's own transform, for the full model and a lean bundle; another
    transform is run whole, per image."""
    from vljepa.serving.torch_backend import TorchBackend

    g = np.random.default_rng(2)
    imgs = [Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in ((64, 64), (480, 640), (65, 300), (3, 5))]
    want = np.stack([model.x_encoder.transform(im).numpy() for im in imgs])
    for b in (TorchBackend(model), TorchBackend(vljepa.load(bundle, lean=True))):
        px = np.stack([b.preprocess(im) for im in imgs])
        assert px.dtype == np.uint8 and px.shape == (4, *b.image_size, 3)
        np.testing.assert_array_equal(b.float_pixels(px), want)
    b = TorchBackend(model)
    b.pixel_spec, b.transform = None, lambda im: model.x_encoder.transform(im) * 2
    px = np.stack([b.preprocess(im) for im in imgs])
    assert px.dtype == np.float32 and np.array_equal(b.float_pixels(px), want * 2)
    with pytest.raises(ValueError, match="pixel_spec"):
        b.float_pixels(np.zeros((1, 8, 8, 3), np.uint8))


def test_a_question_or_candidate_not_stored_is_a_clear_error(bundle, images):
    lean = vljepa.load(bundle, lean=True)
    with pytest.raises(NotInBundleError, match="what colour is it"):
        lean.answer(images[:1], ["what colour is it?"])
    with pytest.raises(NotInBundleError, match="purple"):
        lean.answer(images[:1], QUESTIONS[:1], ["red", "purple"])
    with pytest.raises(ValueError, match="2 questions"):
        lean.predict(images[:1], QUESTIONS[:2])


def test_fallback_answers_with_the_full_model_and_says_so(bundle, images):
    lean = vljepa.load(bundle, lean=True, fallback=True)
    qs = ["what colour is it?", QUESTIONS[0]]
    with pytest.warns(UserWarning, match="not stored in the serving bundle.*full model"):
        la, _ = lean.answer(images[:2], qs, ["red", "purple", "circle"])
    assert la == vljepa.load(bundle).answer(images[:2], qs, ["red", "purple", "circle"])[0]


def test_a_changed_model_file_makes_the_bundle_stale(model, tmp_path):
    vljepa.export_serving(_saved(model, tmp_path / "model"), tmp_path, QUESTIONS[:2], CANDIDATES)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    assert (tmp_path / "serving.json").is_file() and (tmp_path / "serving.safetensors").is_file()
    other = vljepa.load(tmp_path)
    with torch.no_grad():
        other.predictor.head.bias.add_(1.0)
    other.save_pretrained(tmp_path)  # the model changes, the serving files do not
    with pytest.raises(ValueError, match="SHA-256 differs.*export the bundle again"):
        vljepa.load(tmp_path, lean=True)


def test_a_plain_saved_model_is_not_a_bundle(model, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="serving.json is missing.*export-serving"):
        vljepa.load(tmp_path, lean=True)
    with pytest.raises(ValueError, match="fallback=True goes with lean=True"):
        vljepa.load(tmp_path, fallback=True)


def test_export_needs_questions_and_candidates(model, tmp_path):
    with pytest.raises(ValueError, match="no questions"):
        vljepa.export_serving(model, tmp_path, [], CANDIDATES)
    assert model.answers is None  # the session model has no saved vocabulary
    with pytest.raises(ValueError, match="no candidates given"):
        vljepa.export_serving(model, tmp_path, QUESTIONS)
    assert not (tmp_path / "serving.json").exists()


def test_a_lean_process_imports_no_encoder_library(bundle, images):
    code = (
        "import sys, json, vljepa\n"
        f"m = vljepa.load({str(bundle)!r}, lean=True)\n"
        f"a, _ = m.answer({images[:2]!r}, {QUESTIONS[:2]!r})\n"
        "heavy = ['timm', 'torchvision', 'transformers', 'sentence_transformers', 'open_clip',\n"
        "         'lightning', 'huggingface_hub', 'tokenizers']\n"
        "print(json.dumps({'answers': a, 'imported': [h for h in heavy if h in sys.modules]}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["imported"] == []
    assert out["answers"] == vljepa.load(bundle).answer(images[:2], QUESTIONS[:2], CANDIDATES)[0]


def test_cli_export_serving_and_answer_lean(model, tmp_path, images, capsys):
    src = tmp_path / "model"
    model.save_pretrained(src)
    qfile = tmp_path / "questions.txt"
    qfile.write_text("\n".join(QUESTIONS[1:]) + "\n\n")
    out = tmp_path / "serve"
    assert main(["export-serving", str(src), str(out), "--questions", QUESTIONS[0],
                 "--questions-file", str(qfile), "--candidates", *CANDIDATES]) == 0
    assert json.loads((out / "serving.json").read_text())["questions"] == QUESTIONS
    capsys.readouterr()
    args = ["answer", "-m", str(out), "--image", *images[:2], "--question", QUESTIONS[2]]
    assert main([*args, "--lean"]) == 0
    lean_rows = json.loads(capsys.readouterr().out)
    assert main([*args, "--candidates", *CANDIDATES]) == 0
    full_rows = json.loads(capsys.readouterr().out)
    assert [r["answer"] for r in lean_rows] == [r["answer"] for r in full_rows]
    assert main(["answer", "-m", str(out), "--lean", "--image", images[0],
                 "--question", "what colour?"]) == 2
    assert "not stored in the serving bundle" in capsys.readouterr().err
    assert main(["export-serving", str(src), str(tmp_path / "x")]) == 2
    assert "no questions given" in capsys.readouterr().err
