"""VQA accuracy of a trained model, overall and per question type.

    python eval/vqa.py checkpoints/<run>/model            # a saved model directory
    python eval/vqa.py checkpoints/<run>/checkpoints/last.ckpt
    python eval/vqa.py MODEL --source parquet --data-files '{"test": "vqa.parquet"}' ...

Answers are chosen discriminatively: the candidate answer (every answer seen in the dataset's
splits) whose Y-encoder embedding is nearest, by cosine, to the predicted embedding. The same
Lightning test loop runs at the end of ``python train.py``.
"""
from __future__ import annotations

import argparse
import json

import lightning as L

import vljepa
from vljepa.profiling import Stopwatch
from vljepa.training.datamodules import VQADataModule
from vljepa.training.lightning_modules import LitVLJEPA


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", help="saved model directory or Lightning .ckpt")
    ap.add_argument("--source", default="easy_vqa", help="easy_vqa or a datasets.load_dataset path")
    ap.add_argument("--name", default=None, help="dataset config name")
    ap.add_argument("--data-files", default=None, help="JSON for load_dataset's data_files")
    ap.add_argument("--train-split", default="train", help="split whose answers join the candidates")
    ap.add_argument("--split", default="test", help="split to evaluate")
    ap.add_argument("--image-column", default="image")
    ap.add_argument("--question-column", default="question")
    ap.add_argument("--answer-column", default="answer")
    ap.add_argument("--question-type-column", default=None)
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--cache-dir", default=None, help="feature cache (default ~/.cache/vljepa)")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = ap.parse_args(argv)

    total = Stopwatch()
    model = vljepa.load(args.model)
    data = VQADataModule(
        model, source=args.source, name=args.name,
        data_files=json.loads(args.data_files) if args.data_files else None,
        train_split=args.train_split, test_split=args.split, image_column=args.image_column,
        question_column=args.question_column, answer_column=args.answer_column,
        question_type_column=args.question_type_column, max_test_samples=args.max_samples,
        val_fraction=0.0, eval_batch_size=args.batch_size, cache_dir=args.cache_dir)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=not args.json, enable_model_summary=False)
    metrics = {k: float(v) for k, v in trainer.test(LitVLJEPA(model), datamodule=data,
                                                    verbose=not args.json)[0].items()}
    metrics["seconds"] = round(total.seconds, 1)
    print(json.dumps(metrics, indent=2) if args.json else
          "\n".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    return metrics


if __name__ == "__main__":
    main()
