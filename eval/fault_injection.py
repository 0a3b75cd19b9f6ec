"""Kill -9 at random instants, resume, compare with an uninterrupted run: the fault table.

    python eval/fault_injection.py --trials 3            # ~10 min on 2 CPU cores

Every run is ``python train.py experiment=tiny`` for 2 epochs (16 optimizer steps), with a
step checkpoint every ``--every`` steps. Injection points:

    step        SIGKILL at a uniformly random instant while training (after a random step
                has been recorded, a random fraction of a step later)
    checkpoint  SIGKILL a random 0-30 ms after Lightning starts writing a step checkpoint
                (dump + serialise + write + rename of last.ckpt)
    caching     SIGKILL at a random instant while the X-encoder fills an empty feature cache
    export      SIGKILL a random 0-50 ms into save_pretrained (after test)

After each kill: every checkpoint must load (none half-written), the cache index must hold
only complete shards; then the run is resumed (``ckpt_path=last.ckpt`` when one exists, else
rerun) and its final weights and test accuracy are compared with the uninterrupted run's.
Steps lost = last step recorded before the kill - the step of the checkpoint resumed from.
Features computed twice = images encoded by the rerun that were already cached at the kill.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from vljepa.data.cache import FeatureCache
from vljepa.profiling import Stopwatch

if __package__:  # python -m eval.fault_injection
    from .faults import ROOT, env, read_steps, train_cmd
else:  # python eval/fault_injection.py: Python searches the script's directory first
    from faults import ROOT, env, read_steps, train_cmd


def overrides(out: Path, cache: Path, every: int, *extra: str) -> list[str]:
    return ["experiment=tiny", f"paths.output_dir={out}", f"paths.cache_dir={cache}",
            "run_name=fault", "trainer.max_epochs=2",
            f"callbacks.step_checkpoint.every_n_train_steps={every}",
            "+callbacks.record._target_=eval.faults.RecordSteps",
            f"+callbacks.record.path={out / 'steps.jsonl'}", *extra]


def start(ovr: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(ovr), cwd=ROOT, env=env(), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def run(ovr: list[str], log: Path) -> int:
    p = start(ovr, log)
    return p.wait()


def kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def test_acc(log: Path) -> float | None:
    m = re.search(r"^test/acc: ([0-9.]+)$", log.read_text(), re.M)
    return float(m.group(1)) if m else None


def computed(log: Path) -> int:
    m = re.search(r"X-encoder features computed this run: (\d+)", log.read_text())
    return int(m.group(1)) if m else 0


def checkpoints_load(d: Path) -> bool:
    for f in d.glob("*.ckpt"):
        try:
            torch.load(f, weights_only=True)
        except Exception:
            return False
    return True


def weight_diff(a: Path, b: Path) -> float:
    x = torch.load(a, weights_only=True)["state_dict"]
    y = torch.load(b, weights_only=True)["state_dict"]
    return max((x[k] - y[k]).abs().max().item() for k in x)


def export_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max((x[k] - y[k]).abs().max().item() for k in x)


def trial(point: str, work: Path, cache: Path, every: int, rng: random.Random,
          step_seconds: float) -> dict:
    out = work / f"{point}-{rng.randrange(10**6)}"
    log = out.with_suffix(".log")
    if point == "caching":
        cache = out.with_name(out.name + "-cache")  # empty: the kill lands in the X-encoder
    extra: list[str] = []
    if point == "checkpoint":
        step = every * rng.randint(1, 15 // every)
        extra = ["+callbacks.kill._target_=eval.faults.KillAt", f"+callbacks.kill.step={step}",
                 "+callbacks.kill.where=checkpoint", f"+callbacks.kill.delay={rng.uniform(0, .03)}"]
    if point == "export":
        extra = ["+callbacks.kill._target_=eval.faults.KillDuringExport",
                 f"+callbacks.kill.delay={rng.uniform(0, .05)}"]
    total = Stopwatch()
    p = start(overrides(out, cache, every, *extra), log)
    steps_file = out / "steps.jsonl"
    if point == "step":
        target = rng.randint(1, 15)
        while p.poll() is None and len(read_steps(steps_file)) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, step_seconds))
        kill(p)
    elif point == "caching":
        while p.poll() is None and "X-encoder features" not in log.read_text():
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 45))
        kill(p)
    code = p.wait()
    killed = code in (-9, 137) or code == -signal.SIGKILL
    ckdir = out / "checkpoints"
    intact = checkpoints_load(ckdir)
    last = ckdir / "last.ckpt"
    before = read_steps(steps_file)
    ran = max(before) if before else 0
    resumed_from = torch.load(last, weights_only=True)["global_step"] if last.exists() else 0
    cached_at_kill = None
    if point == "caching":
        fps = [d for d in (cache / "features").iterdir()] if (cache / "features").exists() else []
        cached_at_kill = sum(len(FeatureCache(cache, d.name).index(verify=True)) for d in fps)
    model_files_ok = True
    if point == "export" and (out / "model").exists():
        from vljepa.hub import CONFIG_NAME, WEIGHTS_NAME
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            f = out / "model" / name
            if f.exists():
                try:
                    (json.loads(f.read_text()) if name == CONFIG_NAME else
                     __import__("safetensors.torch").torch.load_file(str(f)))
                except Exception:
                    model_files_ok = False
    # resume
    rlog = out.with_suffix(".resume.log")
    since_kill = Stopwatch()
    resume = [f"ckpt_path={last}"] if last.exists() else []
    rp = start(overrides(out, cache, every, *resume), rlog)
    to_first_step = None  # seconds from the resume's start to its first new step
    while rp.poll() is None:
        rows = read_steps(steps_file)
        if to_first_step is None and rows and max(rows) > ran:
            to_first_step = since_kill.seconds
        time.sleep(0.02)
    rcode = rp.returncode
    row = {"point": point, "killed": killed, "ckpts_intact": intact,
           "steps_run": ran, "resumed_from": resumed_from,
           "steps_lost": max(0, ran - resumed_from), "resume_rc": rcode,
           "kill_to_first_step_s": round(to_first_step, 1) if to_first_step is not None else None,
           "acc": test_acc(rlog), "model_files_ok": model_files_ok,
           "stale_temps": [p.name for p in out.rglob(".*") if p.is_file()
                           and "steps" not in p.name and ".hydra" not in str(p)]}
    if point == "caching":
        row["cached_at_kill"] = cached_at_kill
        row["computed_on_rerun"] = computed(rlog)
    if rcode == 0:
        row["weight_diff"] = weight_diff(work / "ref" / "checkpoints" / "last.ckpt", last)
        row["export_diff"] = export_diff(work / "ref" / "model", out / "model")
    row["seconds"] = round(total.seconds, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--every", type=int, default=3, help="checkpoint interval, steps")
    ap.add_argument("--points", nargs="*", default=["step", "checkpoint", "caching", "export"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="vljepa-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    rng = random.Random(args.seed)
    ref = work / "ref"
    assert run(overrides(ref, cache, args.every), work / "ref.log") == 0, "reference run failed"
    rows = read_steps(ref / "steps.jsonl")
    ts = [rows[s]["t"] for s in sorted(rows)]
    step_seconds = sorted(b - a for a, b in zip(ts, ts[1:]))[len(ts) // 2]  # median step
    ref_acc = test_acc(work / "ref.log")
    total = computed(work / "ref.log")  # the reference run starts from an empty cache
    print(f"reference: {len(rows)} steps, test/acc {ref_acc}, work dir {work}", flush=True)
    results = []
    for point in args.points:
        for _ in range(args.trials):
            r = trial(point, work, cache, args.every, rng, step_seconds)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\n| injection point | trials | killed | ckpts intact | steps lost (max; N={args.every}) "
          f"| features computed twice | kill -> first resumed step (s) | max |Δw| final "
          f"| test acc resumed (uninterrupted {ref_acc}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for point in args.points:
        rs = [r for r in results if r["point"] == point]
        twice = "-" if point != "caching" else str(sum(
            max(0, r["cached_at_kill"] + r["computed_on_rerun"] - total) for r in rs))
        times = [r["kill_to_first_step_s"] for r in rs if r["kill_to_first_step_s"] is not None]
        print(f"| {point} | {len(rs)} | {sum(r['killed'] for r in rs)} "
              f"| {sum(r['ckpts_intact'] and r['model_files_ok'] for r in rs)}/{len(rs)} "
              f"| {max(r['steps_lost'] for r in rs)} | {twice} "
              f"| {min(times) if times else '-'}-{max(times) if times else '-'} "
              f"| {max(r.get('weight_diff', float('nan')) for r in rs):.1e} "
              f"| {sorted({r['acc'] for r in rs})} |")


if __name__ == "__main__":
    main()
