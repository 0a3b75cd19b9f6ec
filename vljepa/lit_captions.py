"""Lightning data for caption pretraining (paper §3 stage 1, VL-JEPA_BASE) and caption + VQA
fine-tuning (stage 2): OpenMoji glyphs over cached X-encoder features, optionally mixed with a
VQA source.

Caption rows are query-free: their query mask is all False, so the predictor attends to the
visual tokens only and its output equals ``model(visual)`` with no query, which is what
``VLJEPA.embed_image`` computes at inference. Batches have the same keys as
:class:`vljepa.lit.VQAFeatures`, so :class:`vljepa.lit.LitVLJEPA` trains on them unchanged.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .data.cache import FeatureCache, default_cache_dir
from .data.captions import CAPTION_SOURCES
from .images import image_key
from .lit import VQADataModule, _batch_as_is
from .model import VLJEPA


class CaptionFeatures(Dataset):
    """Captions over cached visual tokens. The target text of a row is its caption wrapped in a
    template drawn at random per row (``"{}"`` keeps it bare); rows of the same image share
    ``answer_ids`` and so count as positives of each other in InfoNCE."""

    def __init__(self, features: torch.Tensor, caption_ids: torch.Tensor, vocab: list[str],
                 templates: Sequence[str], qtype_id: int):
        self.features, self.caption_ids, self.vocab = features, caption_ids, vocab
        self.templates, self.qtype_id = list(templates), qtype_id

    def __len__(self) -> int:
        return len(self.caption_ids)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        ids = self.caption_ids[rows]
        B = len(rows)
        return {"visual": self.features[rows],
                "query_ids": torch.zeros(B, 1, dtype=torch.long),
                "query_mask": torch.zeros(B, 1, dtype=torch.bool),  # no query: VL-JEPA_BASE
                "answer_ids": ids,
                "answer": [random.choice(self.templates).format(self.vocab[i]) for i in ids.tolist()],
                "qtype_ids": torch.full((B,), self.qtype_id)}


class MixedFeatures(Dataset):
    """Several feature datasets as one; a batch gathers from each and pads the query tokens."""

    def __init__(self, parts: list[Dataset]):
        self.parts = [p for p in parts if p is not None and len(p)]
        self.offsets = torch.tensor([0] + [len(p) for p in self.parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        part = torch.searchsorted(self.offsets, rows, right=True) - 1
        batches = [p.__getitems__((rows[part == i] - self.offsets[i]).tolist())
                   for i, p in enumerate(self.parts) if (part == i).any()]
        L_max = max(b["query_ids"].shape[1] for b in batches)
        out: dict[str, Any] = {}
        for key in batches[0]:
            if key == "answer":
                out[key] = [a for b in batches for a in b[key]]
            elif key in ("query_ids", "query_mask"):
                out[key] = torch.cat([torch.nn.functional.pad(b[key], (0, L_max - b[key].shape[1]))
                                      for b in batches])
            elif key == "visual":
                out[key] = torch.cat([b[key].float() for b in batches])
            else:
                out[key] = torch.cat([b[key] for b in batches])
        return out

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])


class CaptionDataModule(L.LightningDataModule):
    """OpenMoji captions (split by emoji into train / val / test), optionally mixed with VQA.

    Args:
        model: the VLJEPA being trained (its X-encoder fills the feature cache).
        source: "openmoji" (glyphs and their Unicode names) or "scenes" (OpenMoji glyphs,
            easy-VQA shapes "red circle" and scikit-image photos; vljepa.data.captions.scenes)
            or "hf" (any image-caption dataset, ``source_kwargs`` = path, name, data_files,
            image_column, caption_column, splits, max_samples; vljepa.data.captions.hf_captions).
        vqa: None for captions only (stage 1), or keyword arguments for a
            :class:`vljepa.lit.VQADataModule` whose questions join every split (stage 2).
        templates: caption templates, e.g. ``["{}", "an emoji of {}"]``.
        caption_repeat: each training caption appears this many times per epoch, so a few
            thousand captions are not drowned by tens of thousands of VQA questions.
        image_size, test_fraction, val_fraction: see :func:`vljepa.data.captions.openmoji`.

    ``vocab`` (the validation / test candidates) is the VQA answers followed by every emoji
    name; ``answer_vocab`` (saved with the model as ``answer``'s default candidates) is the
    VQA answers, or the training captions when there is no VQA.
    """

    def __init__(self, model: VLJEPA, vqa: dict | None = None, source: str = "openmoji",
                 source_kwargs: dict | None = None, templates: Sequence[str] = ("{}",),
                 caption_repeat: int = 1, image_size: int = 128, test_fraction: float = 0.2, val_fraction: float = 0.1,
                 batch_size: int = 256, eval_batch_size: int = 1024, encode_batch_size: int = 64,
                 cache_dir: str | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every caption template needs a '{{}}' slot, got {list(templates)}")
        if caption_repeat < 1:
            raise ValueError(f"caption_repeat must be >= 1, got {caption_repeat}")
        if source not in CAPTION_SOURCES:
            raise ValueError(f"unknown caption source {source!r}; use one of {sorted(CAPTION_SOURCES)}")
        self.model, self.templates, self.caption_repeat = model, list(templates), caption_repeat
        self.source = source
        self.split_kwargs = dict(image_size=image_size, test_fraction=test_fraction,
                                 val_fraction=val_fraction, seed=seed, **dict(source_kwargs or {}))
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.encode_batch_size, self.num_workers = encode_batch_size, num_workers
        self.cache = FeatureCache(cache_dir or default_cache_dir(), model.x_encoder.fingerprint)
        self.vqa = None
        if vqa:
            self.vqa = VQADataModule(model, batch_size=batch_size, eval_batch_size=eval_batch_size,
                                     encode_batch_size=encode_batch_size, cache_dir=cache_dir,
                                     num_workers=num_workers, seed=seed, **dict(vqa))
            self.vqa.cache = self.cache  # one cache object, so the run summary counts both
        self.vocab: list[str] = []
        self.qtypes: list[str] = []
        self.answer_vocab: list[str] = []
        self._splits: dict[str, Any] = {}

    def _load(self, split: str):
        if split not in self._splits:
            ds = CAPTION_SOURCES[self.source](split, **self.split_kwargs)
            images = list(ds["image"])
            self._splits[split] = (ds, images, [image_key(im) for im in images])
        return self._splits[split]

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            _, images, keys = self._load(split)
            self.cache.compute(dict(zip(keys, images)), self.model.x_encoder,
                               self.model.x_encoder.transform, self.encode_batch_size)
        if self.vqa is not None:
            self.vqa.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.vocab:
            return
        vqa_vocab: list[str] = []
        if self.vqa is not None:
            self.vqa.setup(stage)
            vqa_vocab, self.qtypes = list(self.vqa.vocab), list(self.vqa.qtypes)
        captions = {s: list(self._load(s)[0]["caption"]) for s in ("train", "val", "test")}
        # VQA answers first, so the VQA datasets' answer ids stay valid in the joint vocabulary
        self.vocab = list(dict.fromkeys(vqa_vocab + [c for s in captions.values() for c in s]))
        self.qtypes = self.qtypes + ["caption"]
        self.answer_vocab = vqa_vocab or sorted(set(captions["train"]))
        index = {c: i for i, c in enumerate(self.vocab)}
        sets = {}
        for split in ("train", "val", "test"):
            _, _, keys = self._load(split)
            sets[split] = CaptionFeatures(self.cache.load(keys),
                                          torch.tensor([index[c] for c in captions[split]]),
                                          self.vocab, self.templates, len(self.qtypes) - 1)
        v = self.vqa
        self.train_set = MixedFeatures([sets["train"]] * self.caption_repeat
                                       + [v.train_set if v else None])
        self.val_set = MixedFeatures([sets["val"], v.val_set if v else None])
        self.test_set = MixedFeatures([sets["test"], v.test_set if v else None])

    def _loader(self, data, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=_batch_as_is,
                          num_workers=self.num_workers, drop_last=False)

    def train_dataloader(self):
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
