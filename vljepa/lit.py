"""Lightning glue: the training loop (LitVLJEPA) and the VQA data (VQADataModule).

Nothing here is needed to use a trained model; ``import vljepa`` does not import this module.
"""
from __future__ import annotations

import math
import random
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric

from .config import ModelConfig
from .data.cache import FeatureCache, default_cache_dir
from .data.vqa import load_vqa
from .factory import check_config, trained_state_dict
from .images import image_key
from .model import VLJEPA

# The frozen encoders stay in eval mode on purpose (see encoders.FrozenMixin).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


class VQAFeatures(Dataset):
    """Questions over cached visual tokens. Indexing a list of rows returns a whole batch
    (``__getitems__``), so a batch is a few tensor gathers rather than B small copies.

    Batch: visual (B, N, Dx) float16, query_ids (B, L) int64, query_mask (B, L) bool,
    answer_ids (B,) int64 into the answer vocabulary, answer (B strings), qtype_ids (B,) int64.
    """

    def __init__(self, features, image_rows, query_ids, query_mask, answer_ids, vocab, qtype_ids):
        self.features, self.image_rows = features, image_rows
        self.query_ids, self.query_mask = query_ids, query_mask
        self.answer_ids, self.vocab, self.qtype_ids = answer_ids, vocab, qtype_ids

    def __len__(self) -> int:
        return len(self.answer_ids)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        mask = self.query_mask[rows]
        L = int(mask.sum(1).max())  # trim padding to this batch's longest question
        answer_ids = self.answer_ids[rows]
        return {"visual": self.features[self.image_rows[rows]],
                "query_ids": self.query_ids[rows, :L], "query_mask": mask[:, :L],
                "answer_ids": answer_ids, "answer": [self.vocab[i] for i in answer_ids.tolist()],
                "qtype_ids": self.qtype_ids[rows]}

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])


def _batch_as_is(batch):  # module level, so DataLoader workers can pickle it
    return batch


class VQADataModule(L.LightningDataModule):
    """VQA questions (easy-VQA by default, or any ``datasets.load_dataset`` source) over cached
    X-encoder features.

    ``prepare_data`` (one process) runs the X-encoder on images missing from the feature cache;
    ``setup`` (every process) reads the cache. A validation set is held out from the training
    split by image (``val_fraction``), so no validation image is seen in training.
    """

    def __init__(self, model: VLJEPA, source: str = "easy_vqa", name: str | None = None,
                 data_files: Any = None, train_split: str = "train", test_split: str = "test",
                 image_column: str = "image", question_column: str = "question",
                 answer_column: str = "answer", question_type_column: str | None = None,
                 val_fraction: float = 0.05, max_train_samples: int | None = None,
                 max_test_samples: int | None = None, batch_size: int = 256,
                 eval_batch_size: int = 1024, encode_batch_size: int = 64,
                 cache_dir: str | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.model = model
        self.source_kwargs = dict(source=source, name=name, data_files=data_files,
                                  image_column=image_column, question_column=question_column,
                                  answer_column=answer_column,
                                  question_type_column=question_type_column, seed=seed)
        self.splits = {"train": (train_split, max_train_samples),
                       "test": (test_split, max_test_samples)}
        self.val_fraction, self.seed = val_fraction, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.encode_batch_size, self.num_workers = encode_batch_size, num_workers
        self.cache = FeatureCache(cache_dir or default_cache_dir(), model.x_encoder.fingerprint)
        self.vocab: list[str] = []
        self.qtypes: list[str] = []

    @property
    def answer_vocab(self) -> list[str]:
        """The answers saved with the model: ``VLJEPA.answer``'s default candidates."""
        return self.vocab

    def _load(self, which: str):
        split, limit = self.splits[which]
        ds = load_vqa(split=split, max_samples=limit, **self.source_kwargs)
        images = list(ds["image"])
        keys = [image_key(im) for im in images]
        return ds, images, keys

    def prepare_data(self) -> None:
        for which in self.splits:
            _, images, keys = self._load(which)
            self.cache.compute(dict(zip(keys, images)), self.model.x_encoder,
                               self.model.x_encoder.transform, self.encode_batch_size)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab:
            return
        loaded = {which: self._load(which) for which in self.splits}
        self.vocab = sorted({a for ds, _, _ in loaded.values() for a in ds["answer"]})
        self.qtypes = sorted({t for ds, _, _ in loaded.values() for t in ds["question_type"]})
        train_ds, _, train_keys = loaded["train"]
        unique = sorted(set(train_keys))
        random.Random(self.seed).shuffle(unique)
        val_images = set(unique[:round(len(unique) * self.val_fraction)])
        is_val = [k in val_images for k in train_keys]
        self.train_set = self._features(train_ds, train_keys, [not v for v in is_val])
        self.val_set = self._features(train_ds, train_keys, is_val) if val_images else None
        test_ds, _, test_keys = loaded["test"]
        self.test_set = self._features(test_ds, test_keys, [True] * len(test_keys))

    def _features(self, ds, keys: list[str], keep: list[bool]) -> VQAFeatures:
        rows = [i for i, k in enumerate(keep) if k]
        keys = [keys[i] for i in rows]
        unique = list(dict.fromkeys(keys))
        position = {k: i for i, k in enumerate(unique)}
        columns = {c: list(ds[c]) for c in ("question", "answer", "question_type")}
        questions, answers, qtypes = ([col[i] for i in rows] for col in columns.values())
        ids, mask = self.model.tokenize_queries(questions)
        a_index = {a: i for i, a in enumerate(self.vocab)}
        t_index = {t: i for i, t in enumerate(self.qtypes)}
        return VQAFeatures(self.cache.load(unique), torch.tensor([position[k] for k in keys]),
                           ids, mask, torch.tensor([a_index[a] for a in answers]), self.vocab,
                           torch.tensor([t_index[t] for t in qtypes]))

    def _loader(self, data, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=_batch_as_is,
                          num_workers=self.num_workers, drop_last=False)

    def train_dataloader(self):
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, self.eval_batch_size, False) if self.val_set else []

    def test_dataloader(self):
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


class LitVLJEPA(L.LightningModule):
    """Trains a :class:`VLJEPA` with its configured loss; validates and tests VQA accuracy by
    nearest-candidate answering over the datamodule's answer vocabulary.

    Optimiser: AdamW, linear warm-up then cosine decay to ``min_lr_frac * lr`` (``schedule=
    "cosine"``) or a constant rate (``"constant"``; the paper uses both), stepped per batch.
    Checkpoints hold only the trained tensors (the frozen encoders are rebuilt from their ids).
    """

    def __init__(self, model: VLJEPA, lr: float = 2e-3, weight_decay: float = 0.05,
                 warmup_frac: float = 0.05, min_lr_frac: float = 0.01, schedule: str = "cosine"):
        super().__init__()
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.model = model
        self.save_hyperparameters({"model_config": model.config.to_dict(), "lr": lr,
                                   "weight_decay": weight_decay, "warmup_frac": warmup_frac,
                                   "min_lr_frac": min_lr_frac, "schedule": schedule})
        self.strict_loading = False  # frozen encoders are not in the checkpoint
        self.val_acc = MeanMetric()
        self.test_acc = torch.nn.ModuleDict()

    def training_step(self, batch, batch_idx):
        pred = self.model(batch["visual"], batch["query_ids"], batch["query_mask"])  # (B, D)
        target = self.model.target_embed(batch["answer"])  # (B, D)
        loss = self.model.loss(pred, target, batch["answer_ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        self.log("train/temperature", 1 / self.model.logit_scale.exp(), batch_size=len(pred))
        return loss

    def _answer_ids(self, batch) -> torch.Tensor:
        pred = F.normalize(self.model(batch["visual"], batch["query_ids"], batch["query_mask"]), dim=-1)
        return (pred @ self._candidates.T).argmax(1)  # nearest candidate, (B,)

    def _embed_candidates(self) -> None:
        with torch.no_grad():
            self._candidates = F.normalize(self.model.target_embed(self.trainer.datamodule.vocab), dim=-1)

    def on_validation_epoch_start(self):
        self._embed_candidates()

    def validation_step(self, batch, batch_idx):
        correct = (self._answer_ids(batch) == batch["answer_ids"]).float()
        self.val_acc.update(correct)
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=len(correct))

    def on_test_epoch_start(self):
        self._embed_candidates()
        if not self.test_acc:
            names = ["all"] + list(self.trainer.datamodule.qtypes)
            self.test_acc.update({n.replace("/", "_"): MeanMetric().to(self.device) for n in names})

    def test_step(self, batch, batch_idx):
        correct = (self._answer_ids(batch) == batch["answer_ids"]).float()
        self.test_acc["all"].update(correct)
        for i, name in enumerate(self.trainer.datamodule.qtypes):
            sel = batch["qtype_ids"] == i
            if sel.any():
                self.test_acc[name.replace("/", "_")].update(correct[sel])

    def on_test_epoch_end(self):
        for name, metric in self.test_acc.items():
            self.log(f"test/acc_{name}" if name != "all" else "test/acc", metric.compute())
            metric.reset()

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.model.param_groups(hp.lr, hp.weight_decay))
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = max(1, int(hp.warmup_frac * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if hp.get("schedule", "cosine") == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_frac + (1 - hp.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"model.{k}" for k in trained_state_dict(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        answers = getattr(data, "answer_vocab", None) or self.model.answers
        if answers:  # answer()'s default candidates travel with the checkpoint
            checkpoint["vljepa_answers"] = list(answers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        found = checkpoint.get("hyper_parameters", {}).get("model_config")
        if found is None:
            raise ValueError("checkpoint has no model_config: not written by vljepa's train.py")
        check_config(self.model.config, ModelConfig.from_dict(found), "the checkpoint")
