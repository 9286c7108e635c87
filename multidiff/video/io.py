"""Video reading (PyAV) and writing (MP4 through PyAV, GIF through Pillow, PNG frame grids).

Tensors are (channels, frames, height, width) float32 in [-1, 1]; batches of videos add a
leading batch axis. ``read_video`` seeks to the keyframe at or before ``start`` instead of
decoding from the beginning, picks the decoded frame nearest to each target time
start + k / fps (so a target fps resamples the clip by timestamps, dropping or repeating
frames), then resizes (shorter side) and centre-crops. Failures raise
:class:`VideoDecodeError` naming the file.
"""
from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".gif")
#: H.264 encoders tried in order by write_mp4 (codec="auto"); mpeg4 (Part 2) is the last resort
MP4_ENCODERS = ("libx264", "h264", "libopenh264", "mpeg4")


class VideoDecodeError(DataError):
    """A file could not be decoded as video (or holds too few frames); the message names the file."""


def _size_pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def resize_crop(frames: torch.Tensor, size) -> torch.Tensor:
    """(C, T, H, W) -> (C, T, h, w): resize so the frame covers (h, w) (antialiased bilinear),
    then centre-crop. ``size``: int (square) or (h, w)."""
    target = _size_pair(size)
    if target is None:
        return frames
    th, tw = target
    _, _, h, w = frames.shape
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = frames.permute(1, 0, 2, 3)  # (T, C, H, W)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[:, :, top:top + th, left:left + tw].permute(1, 0, 2, 3).contiguous()


def _opened(path):
    """(name for messages, what av.open takes): a path, or a file object over a shard member's bytes."""
    from ..shards import Member

    if isinstance(path, Member):
        try:
            return path.name, path.open()
        except OSError as err:
            raise VideoDecodeError(str(err)) from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: no such file")
    return path, path


def probe_video(path) -> dict:
    """{"fps", "frames" (may be 0 when the container does not say), "duration" (s), "width", "height", "codec"}
    of a video file or shard member."""
    import av

    path, opened = _opened(path)
    try:
        with av.open(opened) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            s = container.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or None
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            else:
                duration = None
            return {"fps": fps, "frames": int(s.frames or 0), "duration": duration, "width": s.width,
                    "height": s.height, "codec": s.codec_context.name}
    except VideoDecodeError:
        raise
    except Exception as err:
        raise VideoDecodeError(f"{path}: cannot open as video ({type(err).__name__}: {err})") from err


def probe_clip_length(path) -> dict:
    """{"duration" (s), "rate" (frames/s)} of a video, for the shard index (multidiff pack)."""
    info = probe_video(path)
    return {"duration": info["duration"], "rate": info["fps"]}


def read_video(path, fps: float | None = None, num_frames: int | None = None, start: float = 0.0, size=None,
               channels: int = 3):
    """Decode a clip -> (frames (channels, frames, height, width) float32 in [-1, 1], fps).

    fps: sample at this rate (None keeps the stream's own rate); num_frames: how many frames
    (None: to the end; a clip that has fewer raises VideoDecodeError "too short"); start: seconds
    from the beginning (the demuxer seeks to the keyframe at or before it); size: int or
    (height, width), resize + centre crop; channels: 3 (RGB) or 1 (luma, ITU-R BT.601).
    Returns the fps of the frames returned. path: a file or a shard member (multidiff.shards.Member).
    """
    import av

    path, opened = _opened(path)
    if channels not in (1, 3):
        raise ValueError(f"read_video: channels must be 1 or 3, got {channels}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"read_video: num_frames must be >= 1, got {num_frames}")
    picked: list[np.ndarray] = []
    try:
        with av.open(opened) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # shared CPUs; decode is not the bottleneck for short clips
            native = float(stream.average_rate or stream.guessed_rate or 25)
            rate = float(fps) if fps else native
            base = stream.time_base or Fraction(1, 1_000_000)
            if start > 0:
                container.seek(int(start / base), stream=stream, backward=True, any_frame=False)
            k, prev = 0, None  # prev: (time, array) of the last decoded frame before the current target
            for n, frame in enumerate(container.decode(stream)):
                t = float(frame.pts * base) if frame.pts is not None else n / native
                if t < start - 0.5 / native:
                    prev = (t, frame)
                    continue
                while num_frames is None or k < num_frames:
                    target = start + k / rate
                    if t < target:  # the current frame may still be the nearest to a later frame
                        break
                    best = prev if prev is not None and abs(prev[0] - target) < abs(t - target) else (t, frame)
                    picked.append(best[1].to_ndarray(format="rgb24"))
                    k += 1
                prev = (t, frame)
                if num_frames is not None and k >= num_frames:
                    break
            if (num_frames is None or k < num_frames) and prev is not None:  # targets past the last frame
                end = prev[0] + 1.0 / native
                while (num_frames is None or k < num_frames) and start + k / rate < end - 1e-9:
                    picked.append(prev[1].to_ndarray(format="rgb24"))
                    k += 1
    except VideoDecodeError:
        raise
    except Exception as err:
        raise VideoDecodeError(f"{path}: cannot decode video ({type(err).__name__}: {err})") from err
    if not picked:
        raise VideoDecodeError(f"{path}: no frames at or after {start:.3f} s")
    if num_frames is not None and len(picked) < num_frames:
        raise VideoDecodeError(f"{path}: too short: {len(picked)} frames at {rate:g} fps from {start:.3f} s, "
                               f"needs {num_frames}")
    x = torch.from_numpy(np.stack(picked)).permute(3, 0, 1, 2).float()  # (3, T, H, W) in [0, 255]
    if channels == 1:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = x / 127.5 - 1.0
    return resize_crop(x, size).clamp(-1, 1).contiguous(), rate


# ------------------------------------------------------------------------------------ writers
def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 (grey replicated to RGB)."""
    if frames.ndim != 4 or frames.shape[0] not in (1, 3):
        raise ValueError(f"expected a video (channels 1 or 3, frames, height, width), got {tuple(frames.shape)}")
    x = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1, -1)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


def _upscale(arr: np.ndarray, scale: int) -> np.ndarray:
    return arr if scale <= 1 else arr.repeat(scale, axis=-3).repeat(scale, axis=-2)


def available_mp4_encoder() -> str:
    """The first of MP4_ENCODERS this PyAV build can encode with; ValueError if none."""
    import av

    for name in MP4_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise ValueError(f"this PyAV build has none of the MP4 encoders {MP4_ENCODERS}; write GIFs instead (write_gif)")


def write_mp4(path, frames: torch.Tensor, fps: float, codec: str = "auto", crf: int = 18, scale: int = 1) -> Path:
    """Write (C, T, H, W) in [-1, 1] as an MP4 (H.264, yuv420p) through PyAV; returns the path.

    codec "auto" picks the first encoder of MP4_ENCODERS that this PyAV build has, warning when it
    has to fall back to MPEG-4 Part 2. Odd sizes are padded by edge replication to even ones
    (yuv420p needs them). scale: integer nearest-neighbour up-scaling (small frames).
    """
    import av

    name = available_mp4_encoder() if codec == "auto" else codec
    if codec == "auto" and name == "mpeg4":
        warnings.warn("no H.264 encoder in this PyAV build: writing MPEG-4 Part 2 instead", stacklevel=2)
    arr = _upscale(to_uint8(frames), scale)
    t, h, w, _ = arr.shape
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(name, rate=rate)
        stream.width, stream.height, stream.pix_fmt = arr.shape[2], arr.shape[1], "yuv420p"
        if name in ("libx264", "h264"):
            stream.options = {"crf": str(crf), "preset": "medium"}
        stream.codec_context.thread_count = 1
        for frame in arr:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_gif(path, frames: torch.Tensor, fps: float, scale: int = 1, loop: int = 0) -> Path:
    """Write (C, T, H, W) in [-1, 1] as an animated GIF (Pillow); returns the path."""
    from PIL import Image

    arr = _upscale(to_uint8(frames), scale)
    images = [Image.fromarray(a) for a in arr]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(int(round(1000 / fps)), 20),
                   loop=loop, optimize=False)
    return path


def frame_grid(videos, path, pad: int = 1, scale: int = 1, titles=None) -> Path:
    """A PNG with one row per video and one column per frame: videos (N, C, T, H, W) or a list of
    (C, T, H, W) (same T / H / W). titles: optional list of row titles drawn at the left."""
    from PIL import Image, ImageDraw

    videos = list(videos)
    if not videos:
        raise ValueError("frame_grid: no videos")
    rows = [_upscale(to_uint8(v), scale) for v in videos]
    t, h, w, _ = rows[0].shape
    if any(r.shape != rows[0].shape for r in rows):
        raise ValueError(f"frame_grid: videos differ in shape: {sorted({r.shape for r in rows})}")
    left = 0 if not titles else 8 * max(len(str(s)) for s in titles) + 4
    grid = np.full((len(rows) * (h + pad) + pad, left + t * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j in range(t):
            y, x = pad + i * (h + pad), left + pad + j * (w + pad)
            grid[y:y + h, x:x + w] = r[j]
    image = Image.fromarray(grid)
    if titles:
        draw = ImageDraw.Draw(image)
        for i, s in enumerate(titles):
            draw.text((2, pad + i * (h + pad) + max(h // 2 - 5, 0)), str(s), fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def clip_starts(duration: float, clip_seconds: float, stride: float | None = None) -> list[float]:
    """Start times of the clips of ``clip_seconds`` that fit in ``duration`` every ``stride`` seconds
    (default: non-overlapping)."""
    stride = stride or clip_seconds
    if duration is None or duration + 1e-9 < clip_seconds:
        return []
    return [k * stride for k in range(int(math.floor((duration - clip_seconds) / stride + 1e-9)) + 1)]
