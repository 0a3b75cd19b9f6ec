"""On-disk cache of X-encoder visual tokens.

The X-encoder is frozen, so its output for a given (encoder, preprocessing, image) never changes:
compute it once, read it afterwards. That is most of the CPU cost of training.

Layout: ``<root>/<encoder fingerprint>/shard-*.safetensors``. Each shard holds a tensor
``tokens`` (n, N, Dx) float16 and, in its metadata, the n image keys (content hashes, see
:func:`vljepa.inputs.image_key`). The fingerprint covers the encoder's name, weights and
preprocessing, so changing any of them starts a new cache. Shards are written atomically and
every few hundred images, so an interrupted run keeps what it computed.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

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

    def index(self) -> dict[str, tuple[Path, int]]:
        """Every cached key -> (its shard file, its row in the shard)."""
        index = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                keys = json.loads(f.metadata()["keys"])
            index.update({k: (shard, i) for i, k in enumerate(keys)})
        return index

    def missing(self, keys: Sequence[str]) -> list[str]:
        index = self.index()
        return [k for k in dict.fromkeys(keys) if k not in index]

    def write_shard(self, keys: list[str], tokens: torch.Tensor) -> None:
        """Store visual tokens (n, N, Dx) of n keys as one new shard (float16), atomically."""
        path = self.dir / f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = path.with_name("." + path.name + ".tmp")
        save_file({"tokens": tokens.to(torch.float16).contiguous()}, str(tmp),
                  metadata={"keys": json.dumps(keys)})
        os.replace(tmp, path)

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
            tokens = load_file(str(shard))["tokens"]
            if out is None:
                out = torch.empty(len(keys), *tokens.shape[1:], dtype=torch.float16)
            out[positions] = tokens[[index[keys[p]][1] for p in positions]]
        return out


def to_pixels(item: Any, transform: Callable) -> torch.Tensor:
    """An image -> (3, H, W); a clip (list / tuple of frames) -> (T, 3, H, W)."""
    if isinstance(item, (list, tuple)):
        return torch.stack([transform(load_image(f)) for f in item])
    return transform(load_image(item))
