"""Shared fixtures. Models are built once per session: building loads EfficientNet-Lite0 and
all-MiniLM-L6-v2 from the packages that ship them, a few seconds each."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A narrow predictor keeps unit tests fast; the encoders are the real offline defaults.
TINY_PREDICTOR = {"width": 32, "depth": 1, "heads": 2, "max_query_len": 24, "visual_pool": 2}


@pytest.fixture(scope="session", autouse=True)
def _offline_and_quiet():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature cache for the whole session, so each image is encoded once."""
    return tmp_path_factory.mktemp("vljepa_cache")


@pytest.fixture(scope="session")
def model():
    import vljepa
    torch.manual_seed(0)
    return vljepa.create_model({"predictor": TINY_PREDICTOR}).eval()


@pytest.fixture(scope="session")
def easy_vqa_test_image() -> str:
    import easy_vqa
    return easy_vqa.get_test_image_paths()[0]


# ---- tiny random stand-ins of the paper's models (same classes, a few layers), saved locally ----

@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from vljepa.encoders import resolve_st_name
    return AutoTokenizer.from_pretrained(resolve_st_name("all-MiniLM-L6-v2"))


@pytest.fixture(scope="session")
def tiny_vjepa2(tmp_path_factory) -> str:
    """A V-JEPA 2 (transformers' VJEPA2Model): 32 px, 4 frames, tubelet 2, patch 8 -> 32 tokens."""
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(0)
    cfg = VJEPA2Config(crop_size=32, frames_per_clip=4, tubelet_size=2, patch_size=8,
                       hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                       pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2)
    d = tmp_path_factory.mktemp("tiny-vjepa2")
    VJEPA2Model(cfg).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm_tokenizer) -> str:
    """A 4-layer LlamaForCausalLM (width 32) with a tokenizer, as Llama-3.2-1B's stand-in."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128))
    d = tmp_path_factory.mktemp("tiny-llama")
    lm.save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_sentence_transformer(tmp_path_factory, minilm_tokenizer) -> str:
    """A 1-layer BERT + mean pooling sentence-transformers model, as EmbeddingGemma's stand-in."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = tmp_path_factory.mktemp("tiny-bert")
    BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32,
                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(bert)
    minilm_tokenizer.save_pretrained(bert)
    word = models.Transformer(str(bert), max_seq_length=32)
    st = SentenceTransformer(modules=[word, models.Pooling(getattr(word, "get_embedding_dimension", word.get_word_embedding_dimension)())])
    d = tmp_path_factory.mktemp("tiny-st")
    st.save(str(d))
    return str(d)


def compose(overrides: list[str]):
    """Compose configs/train.yaml as ``python train.py <overrides>`` would (the benchmarks'
    helper, eval/common.py)."""
    from eval.common import compose_train
    return compose_train(overrides)


def tiny_overrides(tmp_path: Path, cache_dir: Path) -> list[str]:
    return ["experiment=tiny", f"paths.output_dir={tmp_path}", f"paths.cache_dir={cache_dir}",
            "run_name=test"]
