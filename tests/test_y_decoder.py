"""The Y-decoder (vljepa/decoders/y_decoder.py): decode(S_Y(t)) ≈ t, saved with the model, and its training
run (train.py experiment=y_decoder)."""
import pytest
import torch

import vljepa
from vljepa.selective import SelectiveDecoder

from conftest import TINY_PREDICTOR, compose

TEXTS = ["red circle", "blue triangle", "grinning face", "cup of coffee", "yes", "no",
         "what color is the shape?", "astronaut", "green rectangle", "cat"]
SMALL = {"width": 64, "depth": 1, "heads": 2, "prefix_tokens": 2, "max_len": 16}


@pytest.fixture(scope="module")
def decoding_model():
    """A tiny VL-JEPA whose Y-decoder has learnt to write TEXTS back from their S_Y."""
    torch.manual_seed(0)
    m = vljepa.create_model({"predictor": TINY_PREDICTOR})
    ids, mask = m.y_encoder.tokenize(TEXTS, 16)
    m.add_y_decoder(dict(SMALL, output_vocab=sorted(set(ids[mask].tolist()) - {101})))
    e = m.embed_text(TEXTS)
    opt = torch.optim.AdamW(m.y_decoder.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        loss = m.y_decoder.loss(e, TEXTS)
        loss.backward()
        opt.step()
    return m.eval()


def test_decoder_writes_texts_back_from_their_embeddings(decoding_model):
    m = decoding_model
    assert m.decode(m.embed_text(TEXTS)) == TEXTS
    assert m.decode(m.embed_text(TEXTS), num_beams=3) == TEXTS
    # unit norm is applied inside: the scale of an embedding does not matter
    assert m.decode(3 * m.embed_text(TEXTS[:2])) == TEXTS[:2]
    assert all(len(s.split()) <= 1 for s in m.decode(m.embed_text(TEXTS), max_new_tokens=1))


def test_decoder_is_saved_and_loaded_with_the_model(decoding_model, tmp_path):
    decoding_model.save_pretrained(tmp_path / "m")
    loaded = vljepa.load(tmp_path / "m")
    assert loaded.config.y_decoder.output_vocab == decoding_model.config.y_decoder.output_vocab
    e = decoding_model.embed_text(TEXTS)
    assert loaded.decode(e) == TEXTS
    assert loaded.decode(e, num_beams=2) == decoding_model.decode(e, num_beams=2)


def test_decode_input_errors(decoding_model, model):
    with pytest.raises(RuntimeError, match="no Y-decoder"):
        model.decode(torch.randn(2, model.config.embed_dim))
    D = decoding_model.config.embed_dim
    with pytest.raises(ValueError, match="batch dimension"):
        decoding_model.decode(torch.randn(D))
    with pytest.raises(ValueError, match=r"\(B, %d\)" % D):
        decoding_model.decode(torch.randn(2, D + 1))
    with pytest.raises(ValueError, match="no embeddings"):
        decoding_model.decode(torch.zeros(0, D))
    bad = torch.randn(2, D)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*rows \[1\]"):
        decoding_model.decode(bad)


def test_selective_decoder_takes_frames_through_the_model(decoding_model):
    from PIL import Image

    sd = SelectiveDecoder(decoding_model, threshold=0.05, window=1)
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    out = sd.run([red, red, red, blue, blue])
    assert out[0][0] == 0 and isinstance(out[0][1], str) and sd.n_decodes == len(out)
    assert sd.step(blue) is None  # same picture again: no change, no decode


def test_train_py_experiment_y_decoder(tmp_path, model, cache_dir):
    from train import train

    model.save_pretrained(tmp_path / "base")
    model.answers = None
    cfg = compose(["experiment=y_decoder", f"model.name_or_path={tmp_path / 'base'}",
                   f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={cache_dir}",
                   "run_name=test", "data.sources=[easy_vqa,openmoji]", "data.max_texts=300",
                   "data.predictions=8", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "module.decoder.width=32",
                   "module.decoder.depth=1", "module.decoder.heads=2", "module.max_new_tokens=4"])
    metrics = train(cfg)
    assert 0 <= metrics["test/exact"] <= 1 and metrics["test/cider"] >= 0
    out = vljepa.load(tmp_path / "run" / "model")
    assert out.y_decoder is not None and out.config.y_decoder.width == 32
    ckpt = vljepa.load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    e = out.embed_text(["grinning face"])
    assert out.decode(e) == ckpt.decode(e)
    # the VL-JEPA itself is untouched: same predictions as the model it started from
    v = torch.randn(2, 49, model.x_encoder.dim)
    assert torch.allclose(out.embed_visual(v), model.embed_visual(v), atol=1e-6)


def test_text_corpus_adds_the_models_own_predictions(model, cache_dir):
    """data.predictions: training rows (Ŝ_Y of easy-VQA training pairs, answer), as the frozen
    model predicts them outside training mode; sources without images add none."""
    from vljepa.data.vqa import load_vqa
    from vljepa.metrics import cached_visual_tokens
    from vljepa.training.datamodules import TextCorpusDataModule

    with pytest.raises(ValueError, match="predictions must be >= 0"):
        TextCorpusDataModule(model, sources=["unicode"], predictions=-1)
    plain = TextCorpusDataModule(model, sources=["easy_vqa", "unicode"], max_texts=40)
    plain.setup()
    model.train()  # the data module must predict in eval mode and hand the mode back
    data = TextCorpusDataModule(model, sources=["easy_vqa", "unicode"], max_texts=40,
                                predictions=6, cache_dir=str(cache_dir))
    data.setup()
    assert model.training
    model.eval()
    rows = data.train_set
    assert len(rows) == len(plain.train_set) + 6
    assert rows.texts[:-6] == plain.train_set.texts
    ds = load_vqa("easy_vqa", "train", max_samples=6, seed=0)
    assert rows.texts[-6:] == list(ds["answer"])
    ids, mask = model.tokenize_queries(list(ds["question"]))
    with torch.no_grad():
        want = torch.nn.functional.normalize(
            model(cached_visual_tokens(model, list(ds["image"]), cache_dir), ids, mask), dim=-1)
    assert torch.allclose(rows.embeddings[-6:], want, atol=1e-5)
    assert set(ds["answer"]) <= set(data.train_texts)
