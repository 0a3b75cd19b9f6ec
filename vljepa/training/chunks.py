"""Streaming training data on litdata (Lightning's data library): convert once, train anywhere.

    any datasets.load_dataset image/video-caption or VQA source (a configs/data/ option)
      ──datamodule.prepare_data: frozen X-encoder, once per image (the feature cache)──►
      ──litdata.optimize──► <out>/{train,val,test}/ chunks + <out>/vljepa.json
          one item per row: visual tokens (N, Dx) float16, query token ids, answer id,
          question-type id, caption flag
      ──StreamingDataset / StreamingDataLoader (ChunkDataModule)──► training batches

The output directory is a local path or an object-storage URI (``s3://``, ``gs://``,
``azure://``): litdata writes and streams both, by the same code. ``vljepa.json`` holds what
the LightningModules read (candidates, answer vocabulary, question types, caption templates),
the X-encoder fingerprint and the query tokenizer's, which training checks against the model.

Convert (Hydra overrides as for train.py; ``--source-data`` names the configs/data/ option
to read, and ``data.*`` overrides apply to it)::

    python -m vljepa.training.chunks --source-data openmoji experiment=paper_stage1
    python -m vljepa.training.chunks --source-data hf_captions --out s3://bucket/stage1 \\
        experiment=paper_stage1 data.source_kwargs.data_files='{train: tr.parquet, ...}'

Train: ``python train.py experiment=paper_stage1`` (its ``data=litdata``;
``data.data_dir=...`` for another location).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import fsspec
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize

from ..model import VLJEPA
from .datamodules import FeatureDataModule
from .features import CaptionFeatures, MixedFeatures, VQAFeatures

META_NAME = "vljepa.json"
FORMAT = "vljepa-litdata/1"
SPLITS = ("train", "val", "test")


def tokenizer_fingerprint(model: VLJEPA) -> str:
    """A hash of how the model tokenizes queries (ids of a fixed probe), stored with the chunks
    (they hold token ids) and checked before training."""
    ids, mask = model.tokenize_queries(["what color is the shape in the picture?", "a"])
    return hashlib.sha256(ids.numpy().tobytes() + mask.numpy().tobytes()).hexdigest()[:16]


class _Rows:
    """The rows of a feature dataset (VQAFeatures / CaptionFeatures / MixedFeatures) as items:
    ``rows[i]`` -> dict of plain tensors and ints (what litdata stores)."""

    def __init__(self, dataset):
        parts = dataset.parts if isinstance(dataset, MixedFeatures) else [dataset]
        self.index = [(p, r) for p, part in enumerate(parts) for r in range(len(part))]
        self.parts = parts

    def __len__(self) -> int:
        return len(self.index)

    def __call__(self, i: int) -> dict[str, Any]:
        p, r = self.index[i]
        part = self.parts[p]
        if isinstance(part, VQAFeatures):
            mask = part.query_mask[r]
            return {"visual": part.features[part.image_rows[r]].clone(),
                    "query_ids": part.query_ids[r][mask].clone(),
                    "answer_id": int(part.answer_ids[r]), "qtype_id": int(part.qtype_ids[r]),
                    "caption": 0}
        if isinstance(part, CaptionFeatures):
            return {"visual": part.features[r].clone(),
                    "query_ids": torch.zeros(0, dtype=torch.long),
                    "answer_id": int(part.caption_ids[r]), "qtype_id": int(part.qtype_id),
                    "caption": 1}
        raise TypeError(f"cannot convert a {type(part).__name__}: VQA or caption features only")


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def convert(model: VLJEPA, data: FeatureDataModule, output_dir: str | os.PathLike,
            chunk_mb: int = 64, min_chunks: int = 64, num_workers: int = 1) -> dict[str, int]:
    """Write a datamodule's train / val / test rows as litdata chunks under ``output_dir``.

    The datamodule fills the feature cache first (``prepare_data``: only images not cached
    yet go through the X-encoder), then every row is stored with its visual tokens (N, Dx)
    float16, its query token ids, answer id (into the candidates), question-type id and
    whether it is a caption (its template is drawn at training time).

    Args:
        model: the model whose X-encoder and query tokenizer the rows are made with.
        data: a :class:`FeatureDataModule` of images (VQA, captions, or both).
        output_dir: a local directory or an object-storage URI; it must not hold chunks yet.
        chunk_mb: largest chunk, MiB. min_chunks: each split gets at least this many chunks
            when it has the rows (litdata hands whole chunks to ranks and workers, so a split
            needs at least ranks x workers chunks).
        num_workers: litdata writer processes.
    Returns: rows written per split.
    Raises: ValueError for a datamodule without images; litdata's error for a non-empty
        output directory.
    """
    if data.cache is None:
        raise ValueError(f"{type(data).__name__} has no images: nothing to convert")
    data.prepare_data()
    data.setup("fit")
    output_dir = str(output_dir)
    counts = {}
    for split, dataset in zip(SPLITS, (data.train_set, data.val_set, data.test_set)):
        rows = _Rows(dataset) if dataset is not None and len(dataset) else None
        counts[split] = len(rows) if rows else 0
        if rows:
            item_bytes = rows(0)["visual"].numel() * 2 + 256
            per_chunk = max(1, min(chunk_mb * 2**20 // item_bytes,
                                   math.ceil(len(rows) / min_chunks)))
            optimize(fn=rows, inputs=list(range(len(rows))), output_dir=_join(output_dir, split),
                     chunk_size=per_chunk, num_workers=num_workers, mode=None,
                     start_method="fork", verbose=False)
    meta = {"format": FORMAT, "rows": counts,
            "x_encoder": model.x_encoder.fingerprint,
            "query_tokenizer": tokenizer_fingerprint(model),
            "candidates": list(data.candidates),
            "answer_vocabulary": list(data.answer_vocabulary),
            "question_types": list(data.question_types),
            "templates": list(getattr(data, "templates", ["{}"]))}
    with fsspec.open(_join(output_dir, META_NAME), "w") as f:  # written last: marks completion
        json.dump(meta, f)
    return counts


class ChunkDataModule(FeatureDataModule):
    """Trains from litdata chunks made by :func:`convert`, streamed with litdata's
    ``StreamingDataset`` / ``StreamingDataLoader``.

    The same code reads a local directory or object storage (``data_dir``: a path or an
    ``s3://`` / ``gs://`` / ``azure://`` URI; remote chunks are cached under ``cache_dir``).
    Rows are split across ranks and DataLoader workers by litdata, shuffled per epoch
    (``seed``), and ``StreamingDataLoader`` is stateful: Lightning saves its position in every
    checkpoint, so a run resumed mid-epoch continues with the remaining batches.

    Batches are those of :mod:`vljepa.training.features`: visual (B, N, Dx) float32, query_ids /
    query_mask (B, L), answer_ids (B,) int64 into ``candidates``, answer (B texts; captions in
    a template drawn per row), qtype_ids (B,).

    Raises (in ``setup``): FileNotFoundError when ``data_dir`` holds no converted data (naming
    it and the command that makes it); ValueError when the chunks were made with another
    X-encoder or query tokenizer than the model's.
    """

    def __init__(self, model: VLJEPA, data_dir: str, batch_size: int = 256,
                 eval_batch_size: int = 1024, num_workers: int = 0, seed: int = 0,
                 cache_dir: str | None = None, storage_options: dict | None = None):
        super().__init__(model, batch_size, eval_batch_size, num_workers=num_workers,
                         images=False)
        self.data_dir, self.seed = str(data_dir), seed
        self.stream_cache = cache_dir
        self.storage_options = dict(storage_options or {})
        self.templates: list[str] = ["{}"]

    def _meta(self) -> dict[str, Any]:
        path = _join(self.data_dir, META_NAME)
        try:
            with fsspec.open(path, "r", **self.storage_options) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no converted data at {self.data_dir} ({META_NAME} missing): make it with "
                f"python -m vljepa.training.chunks --source-data <configs/data option> "
                f"--out {self.data_dir} [train.py overrides]") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not vljepa litdata ({meta.get('format')!r})")
        return meta

    def setup(self, stage: str | None = None) -> None:
        if self.candidates:
            return
        meta = self._meta()
        if meta["x_encoder"] != self.model.x_encoder.fingerprint:
            raise ValueError(f"the chunks at {self.data_dir} hold features of X-encoder "
                             f"{meta['x_encoder']}, the model's is "
                             f"{self.model.x_encoder.fingerprint}: convert again for this model")
        if meta["query_tokenizer"] != tokenizer_fingerprint(self.model):
            raise ValueError(f"the chunks at {self.data_dir} hold query tokens of another "
                             "tokenizer than the model's: convert again for this model")
        self.candidates = meta["candidates"]
        self.answer_vocabulary = meta["answer_vocabulary"]
        self.question_types = meta["question_types"]
        self.templates = meta["templates"]
        sets = {}
        for split in SPLITS:
            if meta["rows"].get(split):
                sets[split] = StreamingDataset(
                    _join(self.data_dir, split), cache_dir=self.stream_cache,
                    shuffle=split == "train", drop_last=split == "train", seed=self.seed,
                    storage_options=self.storage_options or None)
        self.train_set, self.val_set, self.test_set = (sets.get(s) for s in SPLITS)

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """litdata items -> a training batch (see the class docstring)."""
        import random

        B = len(rows)
        L = max(1, max(len(r["query_ids"]) for r in rows))
        ids = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for i, r in enumerate(rows):
            n = len(r["query_ids"])
            ids[i, :n], mask[i, :n] = r["query_ids"], True
        answer_ids = torch.tensor([int(r["answer_id"]) for r in rows])
        answers = [random.choice(self.templates).format(self.candidates[a]) if r["caption"]
                   else self.candidates[a] for r, a in zip(rows, answer_ids.tolist())]
        return {"visual": torch.stack([r["visual"] for r in rows]).float(),
                "query_ids": ids, "query_mask": mask, "answer_ids": answer_ids,
                "answer": answers, "qtype_ids": torch.tensor([int(r["qtype_id"]) for r in rows])}

    def _loader(self, data, batch_size: int, shuffle: bool):
        if data is None:
            return []
        # litdata's loader has no batch when this rank's share is smaller than one batch
        batch_size = max(1, min(batch_size, len(data)))
        return StreamingDataLoader(data, batch_size=batch_size, num_workers=self.num_workers,
                                   collate_fn=self.collate)


def main(argv: list[str] | None = None) -> int:
    """``python -m vljepa.training.chunks --source-data NAME [--out DIR] [overrides ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m vljepa.training.chunks",
        description="Convert a configs/data/ source (any datasets.load_dataset image/video-"
                    "caption or VQA data) into litdata chunks of frozen X-encoder features.")
    parser.add_argument("--source-data", required=True,
                        help="the configs/data/ option to read (easy_vqa, openmoji, "
                             "openmoji_vqa, hf_captions, ...)")
    parser.add_argument("--out", help="output directory or object-storage URI (default: the "
                                      "data.data_dir of the composed train config)")
    parser.add_argument("--config-dir", default="configs", help="train.py's configs/")
    parser.add_argument("--chunk-mb", type=int, default=64, help="largest chunk, MiB")
    parser.add_argument("--min-chunks", type=int, default=64,
                        help="at least this many chunks per split (>= ranks x workers)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from .configs import register_configs

    register_configs()
    config_dir = str(Path(args.config_dir).resolve())
    train_overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("data.")]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        train_cfg = compose("train", overrides=train_overrides)
        source_cfg = compose("train", overrides=[*args.overrides, f"data={args.source_data}"])
    out = args.out or train_cfg.data.get("data_dir")
    if not out:
        parser.error("give --out (the composed data config has no data_dir)")
    model = instantiate(source_cfg.model, _convert_="all")
    data = instantiate(source_cfg.data, model=model)
    counts = convert(model, data, out, args.chunk_mb, args.min_chunks, args.num_workers)
    print(json.dumps({"output_dir": str(out), "rows": counts,
                      "x_encoder_features_computed": data.cache.computed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
