"""The CSV loss log (one row per log interval), config flattening for trackers, and the loss curve
as a PNG (preview files go to the trackers through multidiff.media.log_media)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

COLUMNS = ("step", "samples_seen", "loss", "lr", "grad_norm", "nonfinite_total", "samples_per_sec", "elapsed_s")


class CSVLog:
    """Appends rows to ``path``; on resume drops rows logged after the checkpoint's position,
    so a resumed run's log reads as if it had never stopped."""

    def __init__(self, path: Path, resume_samples: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and resume_samples is not None:
            rows = read_csv(self.path, complete_lines_only=True)  # a kill may have cut the last line
            self._write_all([r for r in rows if int(r["samples_seen"]) <= resume_samples])
        elif not self.path.exists() or resume_samples is None:
            self._write_all([])

    def _write_all(self, rows: list[dict]) -> None:
        """Replace the file atomically: a kill during the rewrite keeps the old one."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in COLUMNS})
        os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: _fmt(row.get(k)) for k in COLUMNS})


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest exact round-trip form
    return str(v)


def read_csv(path: Path, complete_lines_only: bool = False) -> list[dict[str, str]]:
    """The rows of a CSV log; ``complete_lines_only`` drops a last line without its newline."""
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if complete_lines_only and lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return list(csv.DictReader(lines))


def flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"batch_size": 256}} -> {"trainer/batch_size": 256}, values as int/float/str/bool."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat_hparams(v, key))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out

def write_loss_curve(csv_path, png_path) -> Path | None:
    """Plot losses.csv (loss against samples seen, log-scaled loss) to a PNG; None when it has no rows."""
    xs, ys = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                x, y = float(row["samples_seen"]), float(row["loss"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(y):
                xs.append(x)
                ys.append(y)
    if not xs:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)  # no pyplot: a notebook's backend stays as it is
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, ys, lw=1.2)
    if min(ys) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("training loss (interval mean)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(png_path)
    return png_path
