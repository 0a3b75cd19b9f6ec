"""Distributed InfoNCE (open_clip's gather_with_grad) on 2 CPU processes with gloo."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vljepa.losses import gather_ids, gather_with_grad, infonce

B, D, WORLD = 6, 8, 2


def global_batch():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(WORLD * B, D, generator=g)
    target = torch.randn(WORLD * B, D, generator=g)
    ids = torch.randint(0, 4, (WORLD * B,), generator=g)  # repeated targets: shared positives
    return pred, target, ids


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        pred, target, ids = global_batch()
        local = slice(rank * B, (rank + 1) * B)
        p = pred[local].clone().requires_grad_(True)
        t = target[local].clone().requires_grad_(True)
        loss = infonce(gather_with_grad(p), gather_with_grad(t), 10.0, gather_ids(ids[local]))
        loss.backward()
        # what DDP does with the gradients: average them over the ranks
        queue.put((rank, loss.item(), (p.grad / WORLD).tolist(), (t.grad / WORLD).tolist()))  # plain data
    finally:
        # both ranks finish their collectives before either tears gloo down: a rank that
        # destroys its group while the other still talks can abort at exit (seen once in CI)
        dist.barrier()
        dist.destroy_process_group()
    # The result is in the queue (a SimpleQueue writes at once). Skip the interpreter's teardown:
    # there gloo's threads sometimes abort the process ("terminate called without an active
    # exception", about 1 run in 10 on this machine). An exception above still fails the rank.
    os._exit(0)


def test_gathered_loss_equals_the_single_process_loss_on_the_global_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in range(WORLD))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    pred, target, ids = global_batch()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    ref = infonce(pred, target, 10.0, ids)
    ref.backward()
    for rank, loss, gp, gt in results:
        assert loss == pytest.approx(ref.item(), rel=1e-5)
        # gradients reach each rank's own rows, and match the global loss's
        local = slice(rank * B, (rank + 1) * B)
        assert torch.allclose(torch.tensor(gp), pred.grad[local], atol=1e-6)
        assert torch.allclose(torch.tensor(gt), target.grad[local], atol=1e-6)
    # a local-only loss would differ: the other rank's rows are real negatives
    local_only = infonce(pred[:B], target[:B], 10.0, ids[:B]).item()
    assert abs(local_only - ref.item()) > 1e-3


def test_outside_a_process_group_gathering_is_the_identity():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x and gather_ids(None) is None
