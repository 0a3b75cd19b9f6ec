"""Each `vljepa` subcommand on the released checkpoint (checkpoints/vljepa-easyvqa-lite0)."""
import csv
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from vljepa.cli import main

RELEASED = ROOT / "checkpoints" / "vljepa-easyvqa-lite0"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def vqa_example():
    """An easy-VQA test image with its color question and answer."""
    import easy_vqa
    questions, answers, image_ids = easy_vqa.get_test_questions()
    i = next(i for i, q in enumerate(questions) if q.startswith("what color"))
    return easy_vqa.get_test_image_paths()[image_ids[i]], questions[i], answers[i]


def test_answer_in_a_fresh_offline_process(vqa_example):
    image, question, answer = vqa_example
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "vljepa.cli", "answer", "-m", str(RELEASED),
                          "--image", image, "--question", question],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows[0]["answer"] == answer and rows[0]["question"] == question


def test_embed_json_and_csv(capsys, vqa_example, tmp_path):
    image = vqa_example[0]
    code, out, _ = run(capsys, "embed", "-m", RELEASED, "--image", image, image)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2 and rows[0]["input"] == image
    v = rows[0]["embedding"]
    assert len(v) == 256 and abs(sum(x * x for x in v) - 1) < 1e-3 and v == rows[1]["embedding"]
    code, _, _ = run(capsys, "embed", "-m", RELEASED, "--text", "red", "grinning face",
                     "--format", "csv", "-o", tmp_path / "t.csv")
    table = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert code == 0 and [r["input"] for r in table] == ["red", "grinning face"]
    assert len(table[0]) == 257  # input + 256 numbers


def test_classify_top_k(capsys, vqa_example):
    labels = ["red", "blue", "green", "circle"]
    code, out, _ = run(capsys, "classify", "-m", RELEASED, "--image", vqa_example[0],
                       "--labels", *labels, "--top-k", "2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["rank"] for r in rows] == ["1", "2"]
    assert {r["label"] for r in rows} <= set(labels)
    assert float(rows[0]["probability"]) >= float(rows[1]["probability"])


def test_eval_quick(capsys, tmp_path):
    code, out, _ = run(capsys, "eval", "-m", RELEASED, "--task", "digits", "retrieval",
                       "--limit", "20", "--cache-dir", tmp_path)
    rows = {(r["task"], r["metric"]): r["value"] for r in json.loads(out)}
    assert code == 0 and rows[("digits", "n")] == 20 and rows[("retrieval", "n")] == 20
    assert 0 <= rows[("digits", "top1")] <= rows[("digits", "top5")] <= 100
    assert rows[("retrieval", "i2t_R@1")] <= rows[("retrieval", "i2t_R@10")]


def test_convert_a_lightning_checkpoint_of_the_released_model(capsys, tmp_path):
    import torch

    import vljepa
    released = vljepa.load(RELEASED)
    ckpt = {"hyper_parameters": {"model_config": released.config.to_dict()},  # LitVLJEPA's layout
            "state_dict": {f"model.{k}": v for k, v in released.trained_state_dict().items()},
            "vljepa_answers": released.answers}
    torch.save(ckpt, tmp_path / "last.ckpt")
    code, _, err = run(capsys, "convert", tmp_path / "last.ckpt", tmp_path / "model")
    assert code == 0 and "wrote" in err
    converted = vljepa.load(tmp_path / "model")
    assert converted.answers == released.answers
    for k, v in released.trained_state_dict().items():
        assert torch.equal(converted.trained_state_dict()[k], v), k


def test_clear_errors(capsys, tmp_path):
    code, _, err = run(capsys, "answer", "-m", RELEASED, "--image", tmp_path / "nope.png",
                       "--question", "what color is the shape?")
    # the last line: library progress bars may precede it on stderr
    assert code == 2 and err.strip().splitlines()[-1].startswith("vljepa: error:")
    assert "nope.png" in err
    code, _, err = run(capsys, "classify", "-m", tmp_path / "absent", "--image", "x.png",
                       "--labels", "a")
    assert code == 2 and "absent" in err
    code, _, err = run(capsys, "convert", tmp_path / "missing.ckpt", tmp_path / "out")
    assert code == 2 and "missing.ckpt" in err


@pytest.mark.parametrize("command", ["embed", "answer", "classify", "eval", "convert"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert command in capsys.readouterr().out
