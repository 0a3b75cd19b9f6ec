"""LightningModules: what a training step computes, for the three things vljepa trains.

    LitVLJEPA       a VL-JEPA (InfoNCE between Ŝ_Y and S_Y); VQA accuracy by nearest candidate
    LitVLMBaseline  the token-generating baseline (cross-entropy on the answer tokens)
    LitYDecoder     a VL-JEPA's Y-decoder, on text alone (everything else frozen)

All three share one learning-rate schedule (:func:`warmup_schedule`) and one checkpoint trim
(:func:`trim_checkpoint`: checkpoints hold the trained tensors only; the frozen encoders are
rebuilt from their ids), so a ``.ckpt`` loads with :func:`vljepa.load`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from ..baseline import VLMBaseline
from ..config import BaselineConfig, ModelConfig, YDecoderConfig, check_config
from ..metrics import cider
from ..model import VLJEPA
from ..decoders.text_decoder import corpus_vocab
from ..decoders.y_decoder import special_ids

# The frozen encoders stay in eval mode on purpose (see encoders.FrozenMixin).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int | float,
                    warmup_frac: float = 0.05, min_lr_frac: float = 0.01,
                    schedule: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_frac`` of ``total_steps``, then cosine decay to
    ``min_lr_frac`` x the base rate (``schedule="cosine"``) or the base rate held
    (``"constant"``); a per-step LambdaLR.

    Raises ValueError for another ``schedule``."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    total = max(1, int(total_steps))
    warmup = max(1, int(warmup_frac * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trim_checkpoint(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """In ``on_save_checkpoint``: keep only the model's trained tensors, and record the model's
    ``format`` and the answers ``answer()`` defaults to (the datamodule's answer vocabulary, or
    the model's own), so :func:`vljepa.load` reads the ``.ckpt`` like a saved directory."""
    model = module.model
    keep = {f"model.{k}" for k in model.trained_state_dict()}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    checkpoint["vljepa_format"] = model.FORMAT
    # Lightning's `module.trainer` raises when no trainer is attached (a checkpoint saved by
    # hand); `_trainer` is its plain attribute
    data = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    answers = getattr(data, "answer_vocabulary", None) or model.answers
    if answers:  # answer()'s default candidates travel with the checkpoint
        checkpoint["vljepa_answers"] = list(answers)


class LitVLJEPA(L.LightningModule):
    """Trains a :class:`VLJEPA` with its configured loss; validates and tests VQA accuracy by
    nearest-candidate answering over the datamodule's candidates.

    Optimiser: AdamW with :func:`warmup_schedule` (cosine or constant after warm-up; the paper
    uses both), stepped per batch.
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
            candidates = self.trainer.datamodule.candidates
            self._candidates = F.normalize(self.model.target_embed(candidates), dim=-1)

    def on_validation_epoch_start(self):
        self._embed_candidates()

    def validation_step(self, batch, batch_idx):
        correct = (self._answer_ids(batch) == batch["answer_ids"]).float()
        self.val_acc.update(correct)
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=len(correct))

    def on_test_epoch_start(self):
        self._embed_candidates()
        if not self.test_acc:
            names = ["all"] + list(self.trainer.datamodule.question_types)
            self.test_acc.update({n.replace("/", "_"): MeanMetric().to(self.device) for n in names})

    def test_step(self, batch, batch_idx):
        correct = (self._answer_ids(batch) == batch["answer_ids"]).float()
        self.test_acc["all"].update(correct)
        for i, name in enumerate(self.trainer.datamodule.question_types):
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
        sched = warmup_schedule(opt, self.trainer.estimated_stepping_batches, hp.warmup_frac,
                                hp.min_lr_frac, hp.get("schedule", "cosine"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trim_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        found = checkpoint.get("hyper_parameters", {}).get("model_config")
        if found is None:
            raise ValueError("checkpoint has no model_config: not written by vljepa's train.py")
        check_config(self.model.config, ModelConfig.from_dict(found), "the checkpoint")


class LitVLMBaseline(LitVLJEPA):
    """Trains :class:`VLMBaseline` (LLaVA-style: generate the answer text).

    It reuses :class:`LitVLJEPA`'s optimiser, schedule, checkpoint trimming and
    per-question-type test metrics, and changes what a step computes: cross-entropy on the
    answer tokens in training, and lowest-perplexity answering over the datamodule's
    candidates in validation and test. The datamodules are VL-JEPA's own, unchanged.
    """

    def __init__(self, model: VLMBaseline, lr: float = 2e-3, weight_decay: float = 0.05,
                 warmup_frac: float = 0.05, min_lr_frac: float = 0.01,
                 templates: tuple[str, ...] = ("{}", "an emoji of {}")):
        super().__init__(model, lr, weight_decay, warmup_frac, min_lr_frac)
        self.templates = list(templates)

    def setup(self, stage: str) -> None:
        # The decoder's softmax covers the tokens of every text the data can ask it to write
        # (answers, captions, caption templates); decided here, once the data is set up.
        if self.model.decoder is None:
            texts = list(self.trainer.datamodule.candidates)
            self.model.set_output_vocab(texts + [t.format("x") for t in self.templates])
        self.hparams["model_config"] = self.model.config.to_dict()  # with its output vocabulary

    def training_step(self, batch, batch_idx):
        loss = self.model.loss(batch["visual"], batch["query_ids"], batch["query_mask"],
                               batch["answer"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["answer"]))
        return loss

    def _embed_candidates(self) -> None:
        self._candidates = list(self.trainer.datamodule.candidates)

    def _answer_ids(self, batch) -> torch.Tensor:
        scores = self.model.candidate_scores(batch["visual"], batch["query_ids"],
                                             batch["query_mask"], self._candidates)
        return scores.argmax(1).to(batch["answer_ids"].device)  # lowest perplexity, (B,)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        found = checkpoint.get("hyper_parameters", {}).get("model_config")
        if found is None:
            raise ValueError("checkpoint has no model_config: not written by vljepa's train.py")
        found = BaselineConfig.from_dict(found)  # raises on a VL-JEPA checkpoint's config
        if found.output_vocab is not None and found.output_vocab != self.model.config.output_vocab:
            raise ValueError("the checkpoint's decoder vocabulary differs from this data's")


class LitYDecoder(L.LightningModule):
    """Trains ``model.y_decoder`` (added here if the model has none); everything else is frozen.

    The VL-JEPA it decodes for is loaded (``init_from``) and frozen. Each text t of a corpus is
    embedded once by the frozen Y-encoder + head (S_Y(t), unit norm), and the decoder learns to
    write t back from S_Y(t). Predicted embeddings Ŝ_Y are near, not on, their targets (InfoNCE
    aligns directions only up to the temperature), so training perturbs S_Y with random noise of
    relative norm up to ``noise`` (then re-normalises): the decoder learns to read a
    neighbourhood of each target. A noise that small does not reach easy-VQA's yes/no
    predictions (median cosine ~0.4 to their target), so the data module can add the model's own
    predictions on training images with their answers (``data.predictions``, see
    :class:`~vljepa.training.datamodules.TextCorpusDataModule`).

        python train.py experiment=y_decoder model.name_or_path=checkpoints/scenes/model

    Args:
        model: a trained VL-JEPA (``init_from``).
        decoder: :class:`vljepa.config.YDecoderConfig` fields for a new Y-decoder.
        lr, weight_decay, warmup_frac: AdamW with :func:`warmup_schedule` (cosine to 1% of lr).
        noise: training perturbation of S_Y, the largest relative norm (see above).
        max_new_tokens: generation length at test time.

    Logs train/loss (token cross-entropy, nats) and, on the held-out val / test texts,
    {val,test}/exact (fraction written back exactly, case-insensitive) and {val,test}/cider
    (CIDEr-D, pycocoevalcap).
    """

    def __init__(self, model: VLJEPA, decoder: dict | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_frac: float = 0.05, noise: float = 0.5,
                 max_new_tokens: int = 24):
        super().__init__()
        self.model = model
        self.decoder_cfg = dict(decoder or {})
        self.lr, self.weight_decay, self.warmup_frac = lr, weight_decay, warmup_frac
        self.noise, self.max_new_tokens = noise, max_new_tokens
        self._outputs: list[tuple[str, str]] = []
        self.strict_loading = False  # checkpoints hold the trained tensors only, not the encoders
        self.save_hyperparameters(ignore=["model", "decoder"])
        self.hparams["decoder"] = {k: v for k, v in self.decoder_cfg.items()}  # plain data

    def setup(self, stage: str) -> None:
        if self.model.y_decoder is None:
            # the softmax covers exactly the tokens of the training texts (decided once, saved)
            cfg = YDecoderConfig(**self.decoder_cfg)
            ids, mask = self.model.y_encoder.tokenize(self.trainer.datamodule.train_texts,
                                                      cfg.max_len)
            cfg.output_vocab = corpus_vocab(ids, mask,
                                            special_ids(self.model.y_encoder.model.tokenizer)[0])
            self.model.add_y_decoder(cfg)
        self.model.requires_grad_(False)
        self.model.y_decoder.requires_grad_(True)
        self.hparams["model_config"] = self.model.config.to_dict()  # loads with vljepa.load

    def _perturb(self, e: torch.Tensor) -> torch.Tensor:
        if self.noise <= 0:
            return e
        n = F.normalize(torch.randn_like(e), dim=-1)
        r = torch.rand(len(e), 1, device=e.device) * self.noise  # relative norm in [0, noise)
        return F.normalize(e + r * n, dim=-1)

    def training_step(self, batch, batch_idx):
        loss = self.model.y_decoder.loss(self._perturb(batch["embedding"]), batch["text"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    # Held-out texts are scored by decoding them (their tokens need not be in the training
    # vocabulary, so a held-out cross-entropy is not defined): exact match and CIDEr.
    def validation_step(self, batch, batch_idx):
        hyps = self.model.y_decoder.decode(batch["embedding"], self.max_new_tokens)
        self._outputs += list(zip(batch["text"], hyps))

    test_step = validation_step

    def _log_decoding(self, split: str) -> None:
        if not self._outputs:
            return
        refs, hyps = zip(*self._outputs)
        self._outputs = []
        exact = sum(r.lower() == h.lower() for r, h in zip(refs, hyps)) / len(refs)
        self.log(f"{split}/exact", exact, prog_bar=True)
        self.log(f"{split}/cider", cider(list(refs), list(hyps)), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_decoding("val")

    def on_test_epoch_end(self) -> None:
        self._log_decoding("test")

    def configure_optimizers(self):
        params = [p for p in self.model.y_decoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = warmup_schedule(opt, self.trainer.estimated_stepping_batches, self.warmup_frac,
                                min_lr_frac=0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trim_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # resuming: build the decoder with the saved vocabulary before the weights arrive
        cfg = checkpoint.get("hyper_parameters", {}).get("model_config", {}).get("y_decoder")
        if cfg is not None and self.model.y_decoder is None:
            self.model.add_y_decoder(cfg)
