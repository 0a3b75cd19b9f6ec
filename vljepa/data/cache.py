"""On-disk cache of X-encoder visual tokens.

The X-encoder is frozen, so its output for a given (encoder, preprocessing, image) never changes:
compute it once, read it afterwards. That is most of the CPU cost of training.

Layout: ``<root>/<encoder fingerprint>/shard-*.safetensors``. Each shard holds a tensor
``tokens`` (n, N, Dx) float16 and, in its metadata, the n image keys (content hashes, see
:func:`vljepa.inputs.image_key`). The fingerprint covers the encoder's name, weights and
preprocessing, so changing any of them starts a new cache. Shards are written atomically and
every few hundred images, so an interrupted run keeps what it computed. Several processes may
fill one cache at once (DDP ranks, two jobs): each writes its own uniquely named shards, and a
key found in two shards has the same tokens in both.

Each shard's metadata also holds the SHA-256 of its tokens. A shard that cannot be opened or
whose tokens do not match their checksum (a disk error, a copy cut short, a stray write) is
reported with a warning naming the file, moved aside as ``*.corrupt`` and its images are
computed again: it is never read as data.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..hub import atomic_write
from ..inputs import load_image


def default_cache_dir() -> Path:
    """``$VLJEPA_CACHE`` or ``~/.cache/vljepa``."""
    return Path(os.environ.get("VLJEPA_CACHE", Path.home() / ".cache" / "vljepa"))


class FeatureCache:
    """Visual tokens of one X-encoder, keyed by image content.

    Args:
        root: the cache root (one sub-directory per encoder fingerprint).
        fingerprint: ``XEncoder.fingerprint``.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str):
        self.dir = Path(root) / "features" / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # images run through the X-encoder by this object (for reports, tests)
        self.seconds = 0.0  # wall time spent computing them

    def index(self, verify: bool = False) -> dict[str, tuple[Path, int]]:
        """Every cached key -> (its shard file, its row in the shard).

        A shard that cannot be opened (or, with ``verify``, whose tokens do not match their
        checksum) is quarantined (see the module docstring) and its keys are absent."""
        index = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), "pt") as f:
                    meta = f.metadata()
                    keys = json.loads(meta["keys"])
                    if verify and "sha256" in meta and \
                            _digest(f.get_tensor("tokens")) != meta["sha256"]:
                        raise ValueError("its tokens do not match their checksum")
                    if f.get_slice("tokens").get_shape()[0] != len(keys):
                        raise ValueError("its row count differs from its key count")
            except Exception as e:  # safetensors raises its own error types for bad files
                self.quarantine(shard, e)
                continue
            index.update({k: (shard, i) for i, k in enumerate(keys)})
        return index

    def quarantine(self, shard: Path, reason: Exception | str) -> None:
        """Report a corrupt shard (a warning naming it) and rename it to ``<name>.corrupt``, out
        of the index, so its images are computed again."""
        warnings.warn(f"feature cache shard {shard} is corrupt ({reason}); moved aside to "
                      f"{shard.name}.corrupt, its images will be computed again", stacklevel=3)
        try:
            os.replace(shard, shard.with_name(shard.name + ".corrupt"))
        except FileNotFoundError:  # another process quarantined it first
            pass

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The distinct keys not cached, checking every shard's checksum on the way."""
        index = self.index(verify=True)
        return [k for k in dict.fromkeys(keys) if k not in index]

    def write_shard(self, keys: list[str], tokens: torch.Tensor) -> None:
        """Store visual tokens (n, N, Dx) of n keys as one new shard (float16, with its
        checksum), atomically (:func:`vljepa.hub.atomic_write`: a hidden temporary file in the
        cache directory, renamed when complete; the index never lists a hidden file)."""
        path = self.dir / f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tokens = tokens.to(torch.float16).contiguous()
        metadata = {"keys": json.dumps(keys), "sha256": _digest(tokens)}
        atomic_write(path, lambda tmp: save_file({"tokens": tokens}, tmp, metadata=metadata))

    def compute(self, images: dict[str, Any], encode: Callable[[torch.Tensor], torch.Tensor],
                transform: Callable, batch_size: int = 64, shard_size: int = 512,
                progress: bool = True) -> int:
        """Encode the images whose keys are not cached yet.

        Args:
            images: key -> anything :func:`load_image` accepts, or a clip (a list of frames).
            encode: pixels (B, 3, H, W) -> visual tokens (B, N, Dx), e.g. the ``XEncoder``.
            transform: PIL image -> (3, H, W), the encoder's preprocessing.
        Returns: how many images were encoded.
        """
        todo = self.missing(list(images))
        if not todo:
            return 0
        start = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="X-encoder features", unit="img", disable=not progress)
        for s in range(0, len(todo), shard_size):
            keys = todo[s:s + shard_size]
            out = []
            for b in range(0, len(keys), batch_size):
                pixels = torch.stack([to_pixels(images[k], transform)
                                      for k in keys[b:b + batch_size]])
                out.append(encode(pixels).cpu())
                bar.update(len(pixels))
            self.write_shard(keys, torch.cat(out))
        bar.close()
        self.computed += len(todo)
        self.seconds += time.perf_counter() - start
        return len(todo)

    def load(self, keys: Sequence[str]) -> torch.Tensor:
        """Visual tokens (len(keys), N, Dx) float16, in the order of ``keys``.

        Raises KeyError naming the first key that is not cached."""
        index = self.index()
        absent = [k for k in keys if k not in index]
        if absent:
            raise KeyError(f"{len(absent)} image(s) not in the feature cache {self.dir}, e.g. "
                           f"{absent[0]}; run compute() first")
        by_shard: dict[Path, list[int]] = {}
        for pos, k in enumerate(keys):
            by_shard.setdefault(index[k][0], []).append(pos)
        out = None
        for shard, positions in by_shard.items():
            try:
                with safe_open(str(shard), "pt") as f:
                    expected = f.metadata().get("sha256")
                    tokens = f.get_tensor("tokens")
                corrupt = expected is not None and _digest(tokens) != expected
            except Exception as e:  # deleted or damaged since the index was read
                corrupt = e
            if corrupt is not False:
                self.quarantine(shard, "checksum mismatch" if corrupt is True else corrupt)
                raise RuntimeError(f"feature cache shard {shard} is corrupt and was moved aside; "
                                   "run again to compute its images anew")
            if out is None:
                out = torch.empty(len(keys), *tokens.shape[1:], dtype=torch.float16)
            out[positions] = tokens[[index[keys[p]][1] for p in positions]]
        return out


def _digest(tokens: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes, hex."""
    return hashlib.sha256(tokens.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def to_pixels(item: Any, transform: Callable) -> torch.Tensor:
    """An image -> (3, H, W); a clip (list / tuple of frames) -> (T, 3, H, W)."""
    if isinstance(item, (list, tuple)):
        return torch.stack([transform(load_image(f)) for f in item])
    return transform(load_image(item))
