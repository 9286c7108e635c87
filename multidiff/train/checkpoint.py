"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of ``<out_dir>/checkpoints``::

    ckpt-000000065536/          one checkpoint, named by samples seen
        config.json             the resolved Config
        state.json              step, samples seen, data position, counters, LR schedule, scaler, DataSpec
        model.safetensors       the trained weights
        ema.safetensors         the EMA weights (when an EMA is kept)
        optimizer.safetensors   the optimizer's tensors, with optimizer.json for the rest
        rng-<rank>.json         each process's python / numpy / torch / CUDA RNG states
    latest -> ckpt-000000065536 a symbolic link, replaced atomically
    .tmp-ckpt-.../              a checkpoint being written (ignored; removed by the next save)

A save writes into ``.tmp-<name>``, flushes every file to disk, then renames the folder to
its final name and only then moves ``latest``: a crash at any point leaves the previous
checkpoint intact and ``latest`` pointing at a complete one. No pickle is involved.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
NAME_RE = re.compile(r"^ckpt-(\d{12})$")
REQUIRED = ("config.json", "state.json", "model.safetensors")


def checkpoint_name(samples_seen: int) -> str:
    return f"ckpt-{samples_seen:012d}"


# -------------------------------------------------------------- nested state <-> files
def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested structure by ``{"__tensor__": key}``, moving the tensor
    (detached, on CPU, contiguous) into ``tensors``. Dicts with non-string keys and tuples are
    tagged so :func:`join_tensors` restores them exactly (optimizer states use int keys)."""
    if torch.is_tensor(obj):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = [[k, split_tensors(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: v for k, v in items}
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (only tensors and JSON values)")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file(tensors, str(path), metadata=metadata)
    _fsync(path)


def write_state(folder: Path, stem: str, state: Any) -> None:
    """A nested state (e.g. ``optimizer.state_dict()``) as <stem>.safetensors + <stem>.json."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    write_tensors(folder / f"{stem}.safetensors", tensors)
    write_json(folder / f"{stem}.json", skeleton)


def read_state(folder: Path, stem: str, device="cpu") -> Any:
    tensors = load_file(str(folder / f"{stem}.safetensors"), device=str(device))
    return join_tensors(read_json(folder / f"{stem}.json"), tensors)


def write_module(path: Path, module: torch.nn.Module) -> None:
    """A module's state_dict as safetensors (shared tensors stored once)."""
    state = {}
    seen: dict[tuple, str] = {}
    aliases = {}
    for key, t in module.state_dict().items():
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        state[key] = t.detach().cpu().contiguous()
    write_tensors(path, state, metadata={"aliases": json.dumps(aliases)})


def read_module_state(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    state = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for key, target in aliases.items():
        state[key] = state[target]
    return state


def load_module(module: torch.nn.Module, path: Path) -> None:
    """Load weights written by :func:`write_module`; names every missing or unexpected key."""
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    state = read_module_state(path, device)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{path}: weights do not match the model: missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")


# ------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """This process's python, numpy, torch and CUDA RNG states as JSON values."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], np.array(npv[1], dtype=np.uint32), npv[2], npv[3], npv[4]))

    def as_tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(as_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        states = [as_tensor(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ----------------------------------------------------------------------- atomic folders
def begin(root: Path, name: str) -> Path:
    """Create an empty ``.tmp-<name>`` folder to write a checkpoint into (main process)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # debris of an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    return tmp


def commit(root: Path, name: str, keep: int) -> Path:
    """Publish ``.tmp-<name>`` as ``<name>``, point ``latest`` at it, keep the newest ``keep``."""
    tmp, final = root / f".tmp-{name}", root / name
    missing = [f for f in REQUIRED if not (tmp / f).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint {tmp} is incomplete (missing {missing}); not publishing it")
    _fsync(tmp)
    if final.exists():  # the same position was saved before: that copy is kept as it is
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, final)
        _fsync(root)
    link_tmp = root / f".tmp-{LATEST}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(name, link_tmp)
    os.replace(link_tmp, root / LATEST)
    _fsync(root)
    prune(root, keep)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if NAME_RE.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: int(NAME_RE.match(p.name).group(1)))


def prune(root: Path, keep: int) -> None:
    latest = (root / LATEST).resolve() if (root / LATEST).exists() else None
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(len(ckpts) - keep, 0)]:
        if latest is None or old.resolve() != latest:
            shutil.rmtree(old, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a ``latest`` link, a checkpoints folder
    or a run's out_dir. Raises FileNotFoundError with what was looked for."""
    path = Path(path).expanduser()
    candidates = [path, path / LATEST, path / "checkpoints" / LATEST]
    for cand in candidates:
        if cand.is_dir() and (cand / "state.json").is_file():
            return cand.resolve()
    for root in (path, path / "checkpoints"):
        ckpts = list_checkpoints(root)
        if ckpts:
            return ckpts[-1].resolve()
    raise FileNotFoundError(f"no checkpoint at {str(path)!r} (looked for a folder with state.json, "
                            f"{LATEST!r} links and ckpt-* folders)")


def find_latest(out_dir: str | Path) -> Path | None:
    try:
        return resolve(Path(out_dir) / "checkpoints")
    except FileNotFoundError:
        return None
