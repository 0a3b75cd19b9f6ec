"""LightningDataModules: what each data recipe provides to the training loop.

Every datamodule is a :class:`FeatureDataModule`, which declares what the LightningModules and
``train.py`` read: the ``candidates`` answers are chosen from in validation and test, the
``answer_vocabulary`` saved with the model (``VLJEPA.answer``'s default candidates), the
``question_types`` that per-type test accuracy is reported for, the X-encoder feature ``cache``,
and the three loaders. ``prepare_data`` (one process) fills the cache; ``setup`` (every process)
reads it.
"""
from __future__ import annotations

import importlib
import random
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..data import captions as cap
from ..data import rewordings as rw
from ..data.cache import FeatureCache, default_cache_dir
from ..data.captions import CAPTION_SOURCES
from ..data.corpora import corpus_texts
from ..data.vqa import EASY_VQA_SHAPES, load_vqa, true_values
from ..metrics import cached_visual_tokens
from ..inputs import image_key
from ..model import VLJEPA
from .features import (CaptionFeatures, MixedFeatures, RewordedVQAFeatures, TextSet,
                       VQAFeatures, as_batch)


def columns(ds, names: Sequence[str]) -> dict[str, list]:
    """Columns of a ``datasets.Dataset`` as Python lists, read in one slice (``list(ds[name])``
    decodes row by row: seconds for easy-VQA's 48k rows)."""
    return ds.select_columns(list(names))[:]


def image_keys(images: Sequence[Any]) -> list[str]:
    """:func:`~vljepa.inputs.image_key` of each image, hashing each file once: questions share
    images (easy-VQA: about 10 questions per image, given as the same file path)."""
    by_path: dict[str, str] = {}
    keys = []
    for im in images:
        path = im.get("path") if isinstance(im, dict) and not im.get("bytes") else None
        if path is None:
            keys.append(image_key(im))
            continue
        if path not in by_path:
            by_path[path] = image_key(im)
        keys.append(by_path[path])
    return keys


class FeatureDataModule(L.LightningDataModule):
    """The base of vljepa's datamodules: the attributes the training loop reads, the feature
    cache and the loaders.

    Attributes (filled by ``setup``):
        candidates: the texts validation / test answers are chosen from; a batch's
            ``answer_ids`` index them.
        answer_vocabulary: saved with the model as ``answer``'s default candidates; empty when
            the data has no answers of its own (the model then keeps its own).
        question_types: names of a batch's ``qtype_ids`` (test accuracy is reported per type).
        cache: the X-encoder :class:`FeatureCache`, or None for data without images.
        train_set, val_set, test_set: datasets that batch themselves (``__getitems__``).

    Args:
        model: the model being trained (its X-encoder fills the cache; its tokenizers read the
            texts).
        batch_size / eval_batch_size: rows per training / evaluation batch.
        encode_batch_size: images per X-encoder batch when filling the cache.
        cache_dir: the cache root (None: ``$VLJEPA_CACHE`` or ``~/.cache/vljepa``).
        num_workers: DataLoader workers.
    """

    def __init__(self, model: VLJEPA, batch_size: int = 256, eval_batch_size: int = 1024,
                 encode_batch_size: int = 64, cache_dir: str | None = None,
                 num_workers: int = 0, *, images: bool = True):
        super().__init__()
        self.model = model
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.encode_batch_size, self.num_workers = encode_batch_size, num_workers
        self.cache = FeatureCache(cache_dir or default_cache_dir(),
                                  model.x_encoder.fingerprint) if images else None
        self.candidates: list[str] = []
        self.answer_vocabulary: list[str] = []
        self.question_types: list[str] = []
        self.train_set = self.val_set = self.test_set = None

    def encode(self, images: Sequence[Any], keys: Sequence[str]) -> None:
        """Run the frozen X-encoder on the images whose keys are not cached yet."""
        self.cache.compute(dict(zip(keys, images)), self.model.x_encoder,
                           self.model.x_encoder.transform, self.encode_batch_size)

    def _loader(self, data: Dataset | None, batch_size: int, shuffle: bool):
        if data is None:  # e.g. no validation split
            return []
        # torchdata's StatefulDataLoader: Lightning's fit loop saves its position (and its
        # shuffle generator) in every checkpoint and restores it on resume, so a run resumed
        # from a mid-epoch checkpoint sees the remaining batches in the same order
        return StatefulDataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                  collate_fn=as_batch, num_workers=self.num_workers,
                                  drop_last=False)

    def train_dataloader(self):
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


class VQADataModule(FeatureDataModule):
    """VQA questions (easy-VQA by default, or any ``datasets.load_dataset`` source) over cached
    X-encoder features.

    ``prepare_data`` (one process) runs the X-encoder on images missing from the feature cache;
    ``setup`` (every process) reads the cache. A validation set is held out from the training
    split by image (``val_fraction``), so no validation image is seen in training.

    Generated rewordings (easy-VQA only; validation and test keep their own questions):
        rewordings: probability that a training row asks, each time it is drawn, a generated
            rewording of its question (vljepa.data.rewordings: same attribute and value, wh or
            yes/no as the original; a yes/no question may become a negated one, its answer
            flipped) with that rewording's answer. 0 (the default): off.
        rewording_templates: templates kept per attribute x form (seeded with ``seed``).
        held_out_wordings: what no rewording may equal (templates with {color} / {shape}
            slots), checked by :func:`vljepa.data.rewordings.check_disjoint` in ``setup``: a
            list, or the dotted name of a function or list giving them, imported only when
            ``rewordings`` > 0 (configs/data/easy_vqa.yaml names eval/paraphrase.py's
            evaluation wordings, so they are named by the config, never imported by the
            library). Needed when ``rewordings`` > 0; ``[]`` checks nothing, knowingly.

    Raises ValueError for ``rewordings`` outside [0, 1], rewordings of a source other than
    easy-VQA or without ``held_out_wordings``, and (in ``setup``) a rewording that equals a
    held-out wording.
    """

    def __init__(self, model: VLJEPA, source: str = "easy_vqa", name: str | None = None,
                 data_files: Any = None, train_split: str = "train", test_split: str = "test",
                 image_column: str = "image", question_column: str = "question",
                 answer_column: str = "answer", question_type_column: str | None = None,
                 val_fraction: float = 0.05, max_train_samples: int | None = None,
                 max_test_samples: int | None = None, batch_size: int = 256,
                 eval_batch_size: int = 1024, encode_batch_size: int = 64,
                 cache_dir: str | None = None, num_workers: int = 0, seed: int = 0,
                 rewordings: float = 0.0, rewording_templates: int | None = 80,
                 held_out_wordings: str | Sequence[str] | None = None):
        super().__init__(model, batch_size, eval_batch_size, encode_batch_size, cache_dir,
                         num_workers)
        if not 0.0 <= rewordings <= 1.0:
            raise ValueError(f"rewordings is a probability in [0, 1], got {rewordings}")
        if rewordings and source != "easy_vqa":
            raise ValueError(f"generated rewordings are written for easy-VQA's questions, not "
                             f"source {source!r}: set rewordings=0")
        if rewordings and held_out_wordings is None:
            raise ValueError("rewordings > 0 needs held_out_wordings: the evaluation wordings "
                             "no rewording may equal (configs/data/easy_vqa.yaml names "
                             "eval.paraphrase.wordings), or [] to check nothing")
        self.rewordings, self.rewording_templates = float(rewordings), rewording_templates
        self.held_out_wordings = held_out_wordings
        self.source_kwargs = dict(source=source, name=name, data_files=data_files,
                                  image_column=image_column, question_column=question_column,
                                  answer_column=answer_column,
                                  question_type_column=question_type_column, seed=seed)
        self.splits = {"train": (train_split, max_train_samples),
                       "test": (test_split, max_test_samples)}
        self.val_fraction, self.seed = val_fraction, seed

    def load_split(self, which: str):
        """"train" or "test" -> (the dataset, its images, their cache keys)."""
        split, limit = self.splits[which]
        ds = load_vqa(split=split, max_samples=limit, **self.source_kwargs)
        images = columns(ds, ["image"])["image"]
        return ds, images, image_keys(images)

    def prepare_data(self) -> None:
        for which in self.splits:
            _, images, keys = self.load_split(which)
            self.encode(images, keys)

    def setup(self, stage: str | None = None) -> None:
        if self.candidates:
            return
        loaded = {which: self.load_split(which) for which in self.splits}
        cols = [columns(ds, ["answer", "question_type"]) for ds, _, _ in loaded.values()]
        self.candidates = sorted({a for c in cols for a in c["answer"]})
        self.answer_vocabulary = self.candidates
        self.question_types = sorted({t for c in cols for t in c["question_type"]})
        train_ds, _, train_keys = loaded["train"]
        unique = sorted(set(train_keys))
        random.Random(self.seed).shuffle(unique)
        val_images = set(unique[:round(len(unique) * self.val_fraction)])
        is_val = [k in val_images for k in train_keys]
        self.train_set = self._features(train_ds, train_keys, [not v for v in is_val])
        if self.rewordings:
            self.train_set = self._reworded(self.train_set, train_ds, train_keys,
                                            [not v for v in is_val])
        self.val_set = self._features(train_ds, train_keys, is_val) if val_images else None
        test_ds, _, test_keys = loaded["test"]
        self.test_set = self._features(test_ds, test_keys, [True] * len(test_keys))

    def _features(self, ds, keys: list[str], keep: list[bool]) -> VQAFeatures:
        rows = [i for i, k in enumerate(keep) if k]
        keys = [keys[i] for i in rows]
        unique = list(dict.fromkeys(keys))
        position = {k: i for i, k in enumerate(unique)}
        cols = columns(ds, ["question", "answer", "question_type"])
        questions, answers, qtypes = ([col[i] for i in rows] for col in cols.values())
        # a VQA set asks few distinct questions (easy-VQA: 107 in 38,575): tokenise each once
        # a few thousand distinct questions: each tokenised once, and well inside a cached_text
        # predictor's memo of query states (QueryStates.MEMO_SIZE, 20,000)
        distinct = list(dict.fromkeys(questions))
        ids, mask = self.model.tokenize_queries(distinct)
        at = {q: i for i, q in enumerate(distinct)}
        which = torch.tensor([at[q] for q in questions], dtype=torch.long)
        ids, mask = ids[which], mask[which]
        a_index = {a: i for i, a in enumerate(self.candidates)}
        t_index = {t: i for i, t in enumerate(self.question_types)}
        return VQAFeatures(self.cache.load(unique), torch.tensor([position[k] for k in keys]),
                           ids, mask, torch.tensor([a_index[a] for a in answers]), self.candidates,
                           torch.tensor([t_index[t] for t in qtypes]))

    def held_out(self) -> list[str]:
        """``held_out_wordings`` as a list: a dotted name is imported (and called if it is a
        function).

        Raises ValueError when the name does not import.
        """
        held = self.held_out_wordings
        if not isinstance(held, str):
            return list(held or [])
        module, _, attr = held.rpartition(".")
        try:  # a name the config gives (like a _target_), so the library imports no eval/ script
            held = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"held_out_wordings {self.held_out_wordings!r} does not import "
                             f"({e}); run from the repository root, or pass the wordings") from e
        return list(held() if callable(held) else held)

    def _reworded(self, base: VQAFeatures, ds, keys: list[str],
                  keep: list[bool]) -> RewordedVQAFeatures:
        """``base`` (the kept training rows) with generated rewordings: each row's meaning (its
        question and answer, plus the image's other attribute as all its questions fix it),
        the rewordings of every meaning, tokenised once. Checks them against
        :meth:`held_out`."""
        import easy_vqa as ev
        colors = sorted(a for a in ev.get_answers()
                        if a not in EASY_VQA_SHAPES and a not in ("yes", "no"))
        shapes = sorted(EASY_VQA_SHAPES)
        cols = columns(ds, ["question", "answer", "question_type"])
        asked: dict[str, list] = {}
        for k, q, a, t in zip(keys, *cols.values()):
            asked.setdefault(k, []).append((q, a, t))
        truth = {k: true_values(qs, colors, shapes) for k, qs in asked.items()}
        templates = rw.templates(colors, shapes, seed=self.seed,
                                 per_form=self.rewording_templates, avoid=set(cols["question"]))
        rw.check_disjoint(templates, self.held_out(), colors, shapes)
        groups: dict[rw.Meaning, int] = {}
        row_group = []
        for i, k in enumerate(keep):
            if k:
                m = rw.question_meaning(cols["question"][i], cols["answer"][i], colors, shapes)
                m = m._replace(other=truth[keys[i]]["shape" if m.asks == "color" else "color"])
                row_group.append(groups.setdefault(m, len(groups)))
        by_group = [rw.rewordings_for(m, templates) for m in groups]
        questions = [q for pairs in by_group for q, _ in pairs]
        missing = sorted({a for pairs in by_group for _, a in pairs} - set(self.candidates))
        if missing:
            raise ValueError(f"rewording answers {missing} are not among the candidates "
                             f"{self.candidates}: too few training samples?")
        # a few thousand distinct questions: each tokenised once, and well inside a cached_text
        # predictor's memo of query states (QueryStates.MEMO_SIZE, 20,000)
        distinct = list(dict.fromkeys(questions))
        ids, mask = self.model.tokenize_queries(distinct)
        at = {q: i for i, q in enumerate(distinct)}
        which = torch.tensor([at[q] for q in questions], dtype=torch.long)
        sizes = torch.tensor([len(pairs) for pairs in by_group], dtype=torch.long)
        index = {a: i for i, a in enumerate(self.candidates)}
        return RewordedVQAFeatures(
            base, self.rewordings, torch.tensor(row_group, dtype=torch.long),
            sizes.cumsum(0) - sizes, sizes, ids[which], mask[which],
            torch.tensor([index[a] for pairs in by_group for _, a in pairs]), questions,
            self.seed)


class CaptionDataModule(FeatureDataModule):
    """OpenMoji captions (split by emoji into train / val / test), optionally mixed with VQA.

    Args:
        model: the VLJEPA being trained (its X-encoder fills the feature cache).
        source: "openmoji" (glyphs and their Unicode names) or "scenes" (OpenMoji glyphs,
            easy-VQA shapes "red circle" and scikit-image photos; vljepa.data.captions.scenes)
            or "hf" (any image-caption dataset, ``source_kwargs`` = path, name, data_files,
            image_column, caption_column, splits, max_samples; vljepa.data.captions.hf_captions).
        vqa: None for captions only (stage 1), or keyword arguments for a
            :class:`VQADataModule` whose questions join every split (stage 2).
        templates: caption templates, e.g. ``["{}", "an emoji of {}"]``.
        caption_repeat: each training caption appears this many times per epoch, so a few
            thousand captions are not drowned by tens of thousands of VQA questions.
        extra_captions: the probability that a training picture's target text is one of the
            source's own other captions (its ``captions`` column: the emoji corpus's keyword
            captions, "an emoji of a grinning face, smile, happy, joy") instead of a template
            over its name; positives and evaluation still go by the name. 0: names only.
        image_size, test_fraction, val_fraction: see :func:`vljepa.data.captions.openmoji`.

    ``candidates`` (of validation and test) are the VQA answers followed by every caption;
    ``answer_vocabulary`` (saved with the model as ``answer``'s default candidates) is the
    VQA answers, or the training captions when there is no VQA.
    """

    def __init__(self, model: VLJEPA, vqa: dict | None = None, source: str = "openmoji",
                 source_kwargs: dict | None = None, templates: Sequence[str] = ("{}",),
                 caption_repeat: int = 1, extra_captions: float = 0.0, image_size: int = 128, test_fraction: float = 0.2, val_fraction: float = 0.1,
                 batch_size: int = 256, eval_batch_size: int = 1024, encode_batch_size: int = 64,
                 cache_dir: str | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__(model, batch_size, eval_batch_size, encode_batch_size, cache_dir,
                         num_workers)
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every caption template needs a '{{}}' slot, got {list(templates)}")
        if caption_repeat < 1:
            raise ValueError(f"caption_repeat must be >= 1, got {caption_repeat}")
        if not 0.0 <= extra_captions <= 1.0:
            raise ValueError(f"extra_captions must be in [0, 1], got {extra_captions}")
        self.extra_captions = float(extra_captions)
        if source not in CAPTION_SOURCES:
            raise ValueError(f"unknown caption source {source!r}; use one of {sorted(CAPTION_SOURCES)}")
        self.templates, self.caption_repeat = list(templates), caption_repeat
        self.source = source
        self.split_kwargs = dict(image_size=image_size, test_fraction=test_fraction,
                                 val_fraction=val_fraction, seed=seed, **dict(source_kwargs or {}))
        self.vqa = None
        if vqa:
            self.vqa = VQADataModule(model, batch_size=batch_size, eval_batch_size=eval_batch_size,
                                     encode_batch_size=encode_batch_size, cache_dir=cache_dir,
                                     num_workers=num_workers, seed=seed, **dict(vqa))
            self.vqa.cache = self.cache  # one cache object, so the run summary counts both
        self._splits: dict[str, Any] = {}

    def load_split(self, split: str):
        """"train", "val" or "test" -> (the caption dataset, its images, their cache keys)."""
        if split not in self._splits:
            ds = CAPTION_SOURCES[self.source](split, **self.split_kwargs)
            images = columns(ds, ["image"])["image"]
            self._splits[split] = (ds, images, image_keys(images))
        return self._splits[split]

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            _, images, keys = self.load_split(split)
            self.encode(images, keys)
        if self.vqa is not None:
            self.vqa.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.candidates:
            return
        vqa_answers: list[str] = []
        if self.vqa is not None:
            self.vqa.setup(stage)
            vqa_answers = list(self.vqa.candidates)
            self.question_types = list(self.vqa.question_types)
        captions = {s: list(self.load_split(s)[0]["caption"]) for s in ("train", "val", "test")}
        # VQA answers first, so the VQA datasets' answer ids stay valid among all candidates
        self.candidates = list(dict.fromkeys(vqa_answers + [c for s in captions.values()
                                                            for c in s]))
        self.question_types = self.question_types + ["caption"]
        self.answer_vocabulary = vqa_answers or sorted(set(captions["train"]))
        index = {c: i for i, c in enumerate(self.candidates)}
        sets = {}
        for split in ("train", "val", "test"):
            ds, _, keys = self.load_split(split)
            extra = None
            if split == "train" and self.extra_captions > 0:
                if "captions" not in ds.column_names:
                    raise ValueError(f"extra_captions={self.extra_captions} needs a caption "
                                     f"source with a 'captions' column; {self.source!r} has "
                                     f"only {ds.column_names}")
                extra = list(ds["captions"])
            sets[split] = CaptionFeatures(self.cache.load(keys),
                                          torch.tensor([index[c] for c in captions[split]]),
                                          self.candidates, self.templates,
                                          len(self.question_types) - 1, extra,
                                          self.extra_captions if split == "train" else 0.0)
        v = self.vqa
        self.train_set = MixedFeatures([sets["train"]] * self.caption_repeat
                                       + [v.train_set if v else None])
        self.val_set = MixedFeatures([sets["val"], v.val_set if v else None])
        self.test_set = MixedFeatures([sets["test"], v.test_set if v else None])


class TextCorpusDataModule(FeatureDataModule):
    """Texts and their frozen target embeddings S_Y, for the Y-decoder.

    Args:
        model: the (frozen) VL-JEPA whose Y-encoder + head define the space decoded.
        sources: which of :data:`TEXT_SOURCES` to draw texts from.
        templates: each training text is also added wrapped in these (``"{}"`` = bare), as the
            caption targets were; validation and test texts are bare.
        max_texts: keep at most this many training texts (a fixed random subset), None: all.
        predictions: also train on the frozen VL-JEPA's own predictions Ŝ_Y, at most this many
            per source that has images (0: text alone): easy-VQA training (image, question)
            pairs with their answers, and the query-free predictions of the training images of
            openmoji / scenes with their captions. Ŝ_Y sits near, not on, S_Y (easy-VQA yes/no
            predictions: median cosine ~0.4 to S_Y("yes") after InfoNCE), so a decoder that has
            only seen S_Y misreads them; this is ClipCap's recipe (Mokady et al. 2021: train the
            decoder on the embeddings it will be given).
        batch_size: texts per step.
        cache_dir: the X-encoder feature cache read for ``predictions`` (None: ``$VLJEPA_CACHE``
            or ``~/.cache/vljepa``).

    Validation and test texts are those of the val / test splits that no training text equals
    (e.g. the held-out emoji names), so the test measures ``decode(S_Y(t)) ≈ t`` on texts the
    decoder has never been trained to write.
    ``train_texts``: every text the decoder may be asked to write in training. There are no
    images (``cache`` is None), no candidates and no answer vocabulary: the model keeps its own.
    Batches: {"embedding": (B, D) float32 unit vectors, "text": B strings}.

    Raises ValueError on no sources, a template without a slot, or a negative ``predictions``.
    """

    def __init__(self, model: VLJEPA, sources: Sequence[str] = ("easy_vqa", "openmoji"),
                 templates: Sequence[str] = ("{}",), max_texts: int | None = None,
                 predictions: int = 0, batch_size: int = 128, eval_batch_size: int = 512,
                 cache_dir: str | None = None, seed: int = 0):
        super().__init__(model, batch_size, eval_batch_size, images=False)
        if not sources:
            raise ValueError("no text sources given")
        if any("{}" not in t for t in templates):
            raise ValueError(f"every template needs a '{{}}' slot, got {list(templates)}")
        if predictions < 0:
            raise ValueError(f"predictions must be >= 0, got {predictions}")
        self.sources, self.templates = list(sources), list(templates)
        self.max_texts, self.predictions, self.seed = max_texts, predictions, seed
        self.cache_dir = cache_dir
        self.texts: dict[str, list[str]] = {}
        self.train_texts: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.texts:
            return
        raw = [t for src in self.sources for t in corpus_texts(src, "train")]
        train = list(dict.fromkeys(tpl.format(t) for t in raw for tpl in self.templates))
        seen = set(raw) | set(train)
        held = {s: list(dict.fromkeys(t for src in self.sources for t in corpus_texts(src, s)
                                      if t not in seen)) for s in ("val", "test")}
        if self.max_texts is not None and len(train) > self.max_texts:
            train = sorted(random.Random(self.seed).sample(train, self.max_texts), key=train.index)
        self.texts = {"train": train, **held}
        sets = {}
        for split, texts in self.texts.items():
            emb = self.model.embed_text(texts) if texts else torch.zeros(0, self.model.config.embed_dim)
            sets[split] = TextSet(emb, texts)
        if self.predictions:
            emb, texts = prediction_pairs(self.model, self.sources, self.predictions,
                                          self.cache_dir, self.seed)
            sets["train"] = TextSet(torch.cat([sets["train"].embeddings, emb]),
                                    sets["train"].texts + texts)
        self.train_texts = list(dict.fromkeys(sets["train"].texts))
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]


@torch.no_grad()
def prediction_pairs(model: VLJEPA, sources: Sequence[str], per_source: int,
                     cache_dir: str | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The frozen model's predictions Ŝ_Y (n, D) float32 unit vectors on training images, and
    the texts they should decode to (n strings): at most ``per_source`` seeded pairs from each of
    ``sources`` that has images (easy_vqa: question -> answer; openmoji, scenes: query-free ->
    caption). Sources without images (unicode) give none. Visual tokens go through the feature
    cache at ``cache_dir`` (None: the default)."""
    was_training = model.training
    model.eval()  # no query noise: the predictions decode() will be handed
    embs, texts = [], []
    for src in sources:
        if src == "easy_vqa":
            ds = load_vqa("easy_vqa", "train", max_samples=per_source, seed=seed)
            cols = columns(ds, ["image", "question", "answer"])
            visual = cached_visual_tokens(model, cols["image"], cache_dir)
            ids, mask = model.tokenize_queries(cols["question"])
            z = torch.cat([model(visual[i:i + 512], ids[i:i + 512], mask[i:i + 512]).float()
                           for i in range(0, len(visual), 512)])
            embs.append(torch.nn.functional.normalize(z, dim=-1))
            texts += cols["answer"]
        elif src in ("openmoji", "scenes"):
            ds = cap.openmoji("train") if src == "openmoji" else cap.scenes("train")
            rows = sorted(random.Random(seed).sample(range(len(ds)), min(per_source, len(ds))))
            cols = columns(ds.select(rows), ["image", "caption"])
            visual = cached_visual_tokens(model, cols["image"], cache_dir)
            embs.append(torch.cat([model.embed_visual(visual[i:i + 512])
                                   for i in range(0, len(visual), 512)]))
            texts += cols["caption"]
    model.train(was_training)
    if not embs:
        return torch.zeros(0, model.config.embed_dim), []
    return torch.cat(embs), texts
