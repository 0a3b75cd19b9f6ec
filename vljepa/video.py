"""Video files as frames, with PyAV (FFmpeg's libraries; ``pip install av``).

Frames come out as RGB ``PIL.Image``s, so they go through everything images go through: the
X-encoder's preprocessing, the feature cache (keyed by content), ``embed_image`` / ``predict``,
and :class:`vljepa.selective.SelectiveDecoder`.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Iterator, Sequence


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("reading video needs PyAV: pip install av (or 'vljepa[video]')") from e
    return av


def iter_frames(path: str | os.PathLike, fps: float | None = None,
                max_frames: int | None = None) -> Iterator[tuple[float, Any]]:
    """Yield (time in seconds, RGB ``PIL.Image``) from the first video stream of ``path``.

    ``fps``: sample at this rate (the frame shown at each tick 0, 1/fps, 2/fps, ...); None keeps
    every decoded frame. Frames are decoded one at a time, so a long video is never held whole.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable video (names the file and FFmpeg's reason), it
            has no video stream, or ``fps`` / ``max_frames`` is not positive.
    """
    av = _av()
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        next_t, n = 0.0, 0
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else n / 25
                if fps is not None and t + 1e-6 < next_t:
                    continue
                yield t, frame.to_image()  # RGB
                n += 1
                if max_frames is not None and n >= max_frames:
                    return
                if fps is not None:
                    next_t += 1 / fps
                    while next_t <= t:  # the video's own rate is below fps: no duplicates
                        next_t += 1 / fps
        except av.FFmpegError as e:
            raise ValueError(f"{str(path)!r} could not be decoded after {n} frames: {e}") from e


def read_frames(path: str | os.PathLike, fps: float | None = None,
                max_frames: int | None = None) -> tuple[list[float], list]:
    """All sampled frames of a video: (times in seconds, RGB PIL images); see :func:`iter_frames`.
    Raises ValueError when no frame could be read (an empty stream)."""
    pairs = list(iter_frames(path, fps, max_frames))
    if not pairs:
        raise ValueError(f"{str(path)!r} holds no video frames")
    times, frames = zip(*pairs)
    return list(times), list(frames)


def write_video(path: str | os.PathLike, frames: Sequence, fps: float = 10,
                codec: str = "mpeg4") -> None:
    """Write RGB frames (PIL images or (H, W, 3) uint8 arrays, all one size) as a video file.

    For tests and synthetic streams; ``mpeg4`` needs no external encoder.
    """
    import numpy as np

    av = _av()
    if not len(frames):
        raise ValueError("no frames to write")
    arrays = [np.asarray(f.convert("RGB") if hasattr(f, "convert") else f, dtype=np.uint8)
              for f in frames]
    h, w = arrays[0].shape[:2]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless: colours survive the round trip
        for a in arrays:
            if a.shape[:2] != (h, w):
                raise ValueError(f"all frames must be {w}x{h}, got {a.shape[1]}x{a.shape[0]}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def sample_clip(path: str | os.PathLike, num_frames: int) -> list:
    """``num_frames`` RGB PIL frames spread uniformly over the whole video (the first and last
    included when there are enough), as video encoders such as V-JEPA 2 take their clips.
    A video shorter than ``num_frames`` repeats frames. Raises as :func:`iter_frames`."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    with _open(path) as container:
        total = container.streams.video[0].frames if container.streams.video else 0
    if total <= 0:  # the container does not say: count by decoding
        total = sum(1 for _ in iter_frames(path))
    if total == 0:
        raise ValueError(f"{str(path)!r} holds no video frames")
    wanted = [round(i * (total - 1) / max(num_frames - 1, 1)) for i in range(num_frames)]
    frames: dict[int, Any] = {}
    for i, (_, frame) in enumerate(iter_frames(path, max_frames=wanted[-1] + 1)):
        if i in wanted:
            frames[i] = frame
    return [frames[min(i, max(frames))] for i in wanted]


def _open(path: str | os.PathLike):
    """An open PyAV container; FileNotFoundError / ValueError naming the file otherwise."""
    av = _av()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {str(path)!r}")
    try:
        return av.open(str(path))
    except av.FFmpegError as e:
        raise ValueError(f"{str(path)!r} is not a readable video: {e}") from e
