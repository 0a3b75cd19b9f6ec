"""The Hugging Face Hub round trip (issue 14): ``model.push_to_hub(repo_id)`` then
``vljepa.load(repo_id)`` gives the same model, against a local stand-in for the Hub API
(tests/hub_standin.py, an HTTP server on 127.0.0.1), offline.

The stand-in runs in this process; the client (vljepa + huggingface_hub) runs in a subprocess, so
huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME fresh at import and this test
session's environment (conftest sets HF_HUB_OFFLINE=1) is left untouched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_PREDICTOR
from hub_standin import HubStandIn

REPO = "owner/tiny-vljepa"
CARD = {"datasets": ["easy_vqa"], "metrics": {"test/acc": 0.5},
        "recipe": "python train.py experiment=tiny",
        "evaluations": {"Reworded questions": "| type | acc |\n|---|---|\n| negation | 0.9 |"}}

# The client side of the round trip; writes what it found as JSON to argv[1].
ROUND_TRIP = r"""
import json, sys
import torch
import easy_vqa
import huggingface_hub.constants
import vljepa
from vljepa import hub

out, repo = sys.argv[1], sys.argv[2]
predictor, card = json.loads(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(2)
torch.manual_seed(0)
res = {}
model = vljepa.create_model({"predictor": predictor}).eval()
model.answers = ["red", "blue"]
model.card = card

# with hf_xet installed (huggingface_hub's default on x86_64 / arm64) upload_folder takes its
# pipelined path; the stand-in's preupload says "regular" for every file, so no Xet upload starts
res["commit_url"] = model.push_to_hub(repo)
res["commit_url_again"] = model.push_to_hub(repo)  # unchanged: should be no new commit

loaded = vljepa.load(repo)
res["type"], res["training"] = type(loaded).__name__, loaded.training
res["answers"], res["card"] = loaded.answers, loaded.card
res["snapshot"] = str(hub.resolve(repo))
questions, _, image_ids = easy_vqa.get_test_questions()
paths = easy_vqa.get_test_image_paths()
images, questions = [paths[i] for i in image_ids[:2]], questions[:2]
texts = ["red", "blue", "circle", "what color is the shape?"]
with torch.no_grad():
    a, b = model.embed_text(texts), loaded.embed_text(texts)
    res["embed_text_equal"], res["embed_text_shape"] = torch.equal(a, b), list(a.shape)
    a, b = model.predict(images, questions), loaded.predict(images, questions)
    res["predict_equal"], res["predict_shape"] = torch.equal(a, b), list(a.shape)
    res["answer"] = loaded.answer(images, questions)[0] == model.answer(images, questions)[0]

# a second version through create_commit (the path without hf_xet): main moves on, and
# "repo@<commit>" still reads the first one
huggingface_hub.constants.HF_HUB_DISABLE_XET = True
model.answers = ["red", "blue", "green"]
res["commit_url_v2"] = model.push_to_hub(repo, commit_message="More answers")
first = res["commit_url"].rsplit("/", 1)[1]
res["answers_main"] = hub.read_meta(repo)["answers"]
res["answers_first"] = hub.read_meta(f"{repo}@{first}")["answers"]

try:  # a repo the hub does not have
    vljepa.load("owner/none")
    res["missing_error"] = None
except FileNotFoundError as e:
    res["missing_error"] = str(e)
json.dump(res, open(out, "w"))
"""

# With HF_HUB_OFFLINE=1: an uncached repo fails clearly, a cached one reads from the cache.
OFFLINE = r"""
import json, sys
import vljepa
from vljepa import hub

res = {}
try:
    vljepa.load("owner/none")
    res["error"] = None
except FileNotFoundError as e:
    res["error"], res["cause"] = str(e), type(e.__cause__).__name__
res["cached_answers"] = hub.read_meta(sys.argv[2])["answers"] if sys.argv[2] else None
json.dump(res, open(sys.argv[1], "w"))
"""


def client_env(hub_url: str, hf_home: Path, offline: bool) -> dict[str, str]:
    """This process's environment without any HF_* setting, plus the stand-in's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub_url, HF_HUB_OFFLINE="1" if offline else "0", HF_HOME=str(hf_home),
               HF_TOKEN="dummy-token", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT),
               VLJEPA_CACHE=str(hf_home / "vljepa"), OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    for key in ("NO_PROXY", "no_proxy"):  # the stand-in is local, whatever proxy is configured
        env[key] = ",".join(filter(None, [env.get(key), "127.0.0.1", "localhost"]))
    return env


def run_client(script: str, hub_url: str, hf_home: Path, offline: bool, cwd: Path, *args: str
               ) -> dict:
    """Run ``script`` in a fresh interpreter against the stand-in; its JSON result."""
    out = cwd / "result.json"
    proc = subprocess.run([sys.executable, "-c", script, str(out), *args], cwd=cwd,
                          env=client_env(hub_url, hf_home, offline),  # not a local: not in reports
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def hub():
    with HubStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def round_trip(hub, hf_home, tmp_path_factory) -> dict:
    """Push, load and compare once in a fresh process (cwd: an empty directory, so the repo id
    is not also a local path); the stand-in keeps what was uploaded."""
    res = run_client(ROUND_TRIP, hub.url, hf_home, False,
                     tmp_path_factory.mktemp("client"), REPO, json.dumps(TINY_PREDICTOR),
                     json.dumps(CARD))
    print("commit URL:", res["commit_url"])
    return res


def test_push_then_load_gives_the_same_model(round_trip, hub, hf_home):
    res = round_trip
    commits = hub.commits(REPO)
    first = commits[1]  # commits[0] is the repo's initial commit (.gitattributes)
    assert res["commit_url"] == f"{hub.url}/{REPO}/commit/{first.oid}"
    assert set(first.files) == {".gitattributes", "config.json", "model.safetensors",
                                "README.md"}

    assert res["type"] == "VLJEPA" and res["training"] is False
    assert res["embed_text_equal"] and res["embed_text_shape"] == [4, 256]
    assert res["predict_equal"] and res["predict_shape"] == [2, 256]
    assert res["answer"]
    assert res["answers"] == ["red", "blue"] and res["card"] == CARD

    # loaded: main after the second push (the same commit once push_to_hub's card is fixed)
    loaded_oid = res["commit_url_again"].rsplit("/", 1)[1]
    loaded_files = hub.files(REPO, loaded_oid)
    snapshot = Path(res["snapshot"])
    assert snapshot.is_relative_to(hf_home.resolve()) and snapshot.name == loaded_oid
    assert sorted(p.name for p in snapshot.iterdir()) == ["README.md", "config.json",
                                                          "model.safetensors"]
    for name in ("README.md", "config.json", "model.safetensors"):
        assert (snapshot / name).read_bytes() == loaded_files[name]
    # only the three files were fetched (allow_patterns), and nothing was asked of the stand-in
    # that it does not serve (no Xet token, no LFS batch, ...)
    fetched = {p.rsplit("/", 1)[1] for m, p in hub.requests if m == "GET" and "/resolve/" in p}
    assert fetched == {"README.md", "config.json", "model.safetensors"}
    assert hub.unhandled == []


def test_a_new_push_moves_main_and_a_revision_pins_the_old_one(round_trip, hub):
    res = round_trip
    last = hub.commits(REPO)[-1]
    assert last.summary == "More answers"
    assert res["commit_url_v2"] == f"{hub.url}/{REPO}/commit/{last.oid}"
    assert res["answers_main"] == ["red", "blue", "green"]
    assert res["answers_first"] == ["red", "blue"]


def test_unknown_repo_raises_file_not_found(round_trip):
    msg = round_trip["missing_error"]
    assert msg is not None and "'owner/none'" in msg and "RepositoryNotFoundError" in msg


def test_uploaded_config_is_what_save_pretrained_writes(round_trip, hub):
    meta = json.loads(hub.files(REPO, hub.commits(REPO)[1].oid)["config.json"])
    assert meta["format"] == "vljepa/1"
    assert meta["answers"] == ["red", "blue"] and meta["card"] == CARD
    assert meta["model"]["predictor"]["width"] == TINY_PREDICTOR["width"]


def uploaded_card(hub) -> str:
    return hub.files(REPO, hub.commits(REPO)[1].oid)["README.md"].decode()


def test_uploaded_model_card_renders(round_trip, hub):
    from huggingface_hub import ModelCard

    text = uploaded_card(hub)
    print(text)
    card = ModelCard(text)
    assert card.data.library_name == "vljepa"
    assert card.data.datasets == ["easy_vqa"]
    assert "vl-jepa" in card.data.tags and card.data.metrics == ["accuracy"]
    body = card.text
    assert "## Results\n\n| metric | value |\n|---|---|\n| test/acc | 0.5000 |" in body
    assert "## Training recipe\n\n```bash\npython train.py experiment=tiny\n```" in body
    assert "## Reworded questions\n\n| type | acc |\n|---|---|\n| negation | 0.9 |" in body
    assert "| Answer vocabulary | 2 answers |" in body
    assert "model = vljepa.load(" in body


def test_uploaded_model_card_names_the_repo(round_trip, hub):
    text = uploaded_card(hub)
    assert "\n# tiny-vljepa\n" in text
    assert f"vljepa.load({REPO!r})" in text
    # an unchanged model pushed again: every file unchanged, so no new commit
    assert round_trip["commit_url_again"] == round_trip["commit_url"]


def test_offline_load(round_trip, hub, hf_home, tmp_path):
    """HF_HUB_OFFLINE=1 in a fresh process: a repo not in the cache (owner/none: nothing of it
    cached) fails with a FileNotFoundError that says why; the repo the round trip cached reads
    from the cache (its main: the second push); nothing reaches the (still running) stand-in."""
    before = len(hub.requests)
    res = run_client(OFFLINE, hub.url, hf_home, True, tmp_path, REPO)
    assert res["error"] is not None and "HF_HUB_OFFLINE" in res["error"]
    assert "'owner/none'" in res["error"] and res["cause"] == "LocalEntryNotFoundError"
    assert res["cached_answers"] == ["red", "blue", "green"]
    assert len(hub.requests) == before

