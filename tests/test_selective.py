"""Selective decoding of embedding streams (vljepa/selective.py) and video input (vljepa/video.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vljepa.selective import SelectiveDecoder

D = 32


def synthetic_stream(lengths=(10, 7, 12, 9), noise=0.08, seed=0):
    """Segments of jittered copies of one random direction each: (T, D), boundaries, centres."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(lengths), D, generator=g), dim=-1)
    frames = [F.normalize(centres[i] + noise * torch.randn(D, generator=g), dim=-1)
              for i, n in enumerate(lengths) for _ in range(n)]
    bounds = np.cumsum((0,) + tuple(lengths)).tolist()
    return torch.stack(frames), bounds, centres


def nearest_centre(centres):
    return lambda e: [f"scene {int(i)}" for i in (e @ centres.T).argmax(1)]


def test_online_decodes_at_the_boundaries_and_is_silent_within_segments():
    x, bounds, centres = synthetic_stream()
    sd = SelectiveDecoder(decode=nearest_centre(centres), threshold=0.3, window=2)
    out = sd.run(x)
    # a decode at the stream start, then one `window - 1` frames after each boundary
    assert [t for t, _ in out] == [0] + [b + 1 for b in bounds[1:-1]]
    assert [s for _, s in out] == [f"scene {i}" for i in range(4)]
    assert sd.n_decodes == 4
    # fed one frame at a time, the same: None inside segments
    sd.reset()
    texts = [sd.step(e) for e in x]
    assert [i for i, s in enumerate(texts) if s is not None] == [t for t, _ in out]


def test_online_hysteresis_ignores_a_single_odd_frame():
    x, _, centres = synthetic_stream(lengths=(12,))
    x = x.clone()
    x[5] = F.normalize(torch.randn(D), dim=-1)  # one glitch frame
    sd = SelectiveDecoder(decode=nearest_centre(centres), threshold=0.3, window=2)
    assert [t for t, _ in sd.run(x)] == [0]
    sd = SelectiveDecoder(decode=nearest_centre(centres), threshold=0.3, window=1)
    assert len(sd.run(x)) == 3  # without the window it decodes the glitch and the way back


def test_offline_recovers_the_known_segments():
    x, bounds, centres = synthetic_stream()
    sd = SelectiveDecoder(decode=nearest_centre(centres))
    segs = sd.segment(x, n_segments=4)
    assert [s.start for s in segs] + [segs[-1].end] == bounds
    assert [s.text for s in segs] == [f"scene {i}" for i in range(4)]
    assert sd.n_decodes == 4
    # a Ward distance threshold finds the same cut without being told the count
    assert [s.start for s in SelectiveDecoder(decode=nearest_centre(centres)).segment(
        x, distance_threshold=2.0)] == bounds[:-1]


@pytest.mark.parametrize("bad", [torch.zeros(0, D), torch.full((5, D), float("nan"))])
def test_empty_or_nan_streams_are_errors(bad):
    sd = SelectiveDecoder(decode=lambda e: ["x"] * len(e))
    with pytest.raises(ValueError, match="empty|non-empty|NaN"):
        sd.run(bad)
    with pytest.raises(ValueError, match="empty|non-empty|NaN"):
        sd.segment(bad, n_segments=2)
    with pytest.raises(ValueError, match="empty"):
        sd.run([])


def test_a_nan_frame_embedding_is_an_error_online():
    sd = SelectiveDecoder(decode=lambda e: ["x"] * len(e))
    sd.step(F.normalize(torch.randn(D), dim=-1))
    e = torch.randn(D)
    e[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sd.step(e)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="release"):
        SelectiveDecoder(decode=str, threshold=0.2, release=0.3)
    with pytest.raises(ValueError, match="model"):
        SelectiveDecoder()


# ---- video ----

COLOURS = [(220, 30, 30), (30, 180, 40), (40, 60, 220)]


def test_video_round_trip_keeps_the_scene_changes(tmp_path):
    pytest.importorskip("av")
    from vljepa.video import read_frames, write_video

    lengths = [6, 9, 5]
    frames = [np.full((48, 64, 3), c, np.uint8) for c, n in zip(COLOURS, lengths) for _ in range(n)]
    write_video(tmp_path / "scenes.mp4", frames, fps=10)
    times, back = read_frames(tmp_path / "scenes.mp4")
    assert len(back) == 20 and back[0].size == (64, 48)
    assert times[:3] == pytest.approx([0.0, 0.1, 0.2])
    colour = [int(np.argmin([np.abs(np.asarray(f, float).mean((0, 1)) - c).sum() for c in COLOURS]))
              for f in back]
    assert colour == [i for i, n in enumerate(lengths) for _ in range(n)]
    times, half = read_frames(tmp_path / "scenes.mp4", fps=5)  # every other frame
    assert len(half) == 10 and times[1] == pytest.approx(0.2)


def test_unreadable_or_missing_video_is_a_clear_error(tmp_path):
    pytest.importorskip("av")
    from vljepa.video import read_frames

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 20)
    with pytest.raises(ValueError, match="not a readable video"):
        read_frames(bad)
    with pytest.raises(FileNotFoundError, match="no video file"):
        read_frames(tmp_path / "missing.mp4")
