import math

import pytest
import torch
import torch.nn.functional as F

from vljepa.losses import get_loss, infonce


def test_infonce_hand_checked_value():
    # Two orthogonal unit vectors, predictions equal to targets, logit scale 1:
    # each row's logits are [1, 0], so each direction's loss is -log(e / (e + 1)).
    x = torch.eye(2)
    expected = math.log(1 + math.exp(-1))
    assert infonce(x, x, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_infonce_matches_clip_cross_entropy_when_targets_are_distinct():
    torch.manual_seed(0)
    p, t = torch.randn(8, 16), torch.randn(8, 16)
    logits = 10.0 * F.normalize(p, dim=-1) @ F.normalize(t, dim=-1).T
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(8)) + F.cross_entropy(logits.T, torch.arange(8)))
    assert infonce(p, t, 10.0).item() == pytest.approx(clip.item(), abs=1e-5)


def test_identical_targets_are_positives_not_negatives():
    # Rows 0 and 1 share one answer. Without ids the shared target is a negative of the other
    # row; with ids it is a positive, and a perfect prediction then has a lower loss.
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    without = infonce(t, t, 5.0)
    with_ids = infonce(t, t, 5.0, torch.tensor([0, 0, 1]))
    assert with_ids < without
    # Row 0's prediction->target term by hand: positives {0, 1}, negative {2}.
    s = 5.0 * t @ t.T
    row0 = -(torch.logsumexp(s[0, :2], 0) - torch.logsumexp(s[0], 0))
    assert row0.item() == pytest.approx(math.log(1 + math.exp(-5) / 2), abs=1e-6)


def test_ablation_losses_are_zero_at_the_target_and_positive_elsewhere():
    t = torch.randn(4, 8)
    for kind in ("cosine", "l1", "l2"):
        fn = get_loss(kind)
        assert fn(t * 3, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-free: unit vectors
        assert fn(-t, t).item() > 0.1


def test_unknown_loss_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge")
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        infonce(torch.randn(3, 4), torch.randn(2, 4), 1.0)
