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
    .trash-ckpt-.../            a checkpoint being deleted (ignored; removed by the next save)
    superseded-<time>/          checkpoints of an earlier run that were ahead of this run's start

A save writes into ``.tmp-<name>``, flushes every file to disk, then renames the folder to
its final name and only then moves ``latest``: a crash at any point leaves the previous
checkpoint intact and ``latest`` pointing at a complete one. A folder of the same name (a run
rolled back to an earlier checkpoint and trained again) is replaced, never kept in place of
what this run computed. Deleting renames first, so a half-deleted folder never keeps a
checkpoint's name; ``state.json`` lists every file, and a folder missing one is not a
checkpoint (:func:`list_checkpoints` skips it and says so). No pickle is involved.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

LATEST = "latest"
NAME_RE = re.compile(r"^ckpt-(\d{12})$")
REQUIRED = ("config.json", "state.json", "model.safetensors")
#: checkpoints written before state.json listed its files: these besides REQUIRED
LEGACY_FILES = ("optimizer.safetensors", "optimizer.json")
#: what a warm start (model.init_from) reads
WEIGHTS = ("model.safetensors",)


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
    """Write JSON through a temporary file and a rename: a kill leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """A JSON file; CheckpointError naming the file when it is missing, empty or corrupt."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the file is truncated or corrupt") from None


def read_tensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """A safetensors file; CheckpointError naming the file when it is missing, empty or corrupt."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error type (header too small, truncated data)
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); the file is truncated "
                              f"or corrupt") from None


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
    tensors = read_tensors(folder / f"{stem}.safetensors", device)
    skeleton = read_json(folder / f"{stem}.json")
    try:
        return join_tensors(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / (stem + '.json')} does not match {stem}.safetensors beside it "
                              f"({type(err).__name__}: {err})") from None


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
    """A module's weights from a file of :func:`write_module`, or from a sharded checkpoint's shards
    (``CKPT/model.safetensors`` or ``CKPT/ema.safetensors`` named as if it were written whole)."""
    from safetensors import safe_open

    sharded = _sharded_part(path)
    if sharded is not None:
        from .sharding import read_full_state

        return {k: v.to(device) for k, v in read_full_state(*sharded).items()}
    state = read_tensors(path, device)
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for key, target in aliases.items():
        state[key] = state[target]
    return state


def load_module(module: torch.nn.Module, path: Path) -> None:
    """Load weights written by :func:`write_module`; names every missing or unexpected key."""
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    state = read_module_state(path, device)
    own = module.state_dict()
    reshaped = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
                if k in own and v.shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if reshaped or missing or unexpected:
        def first(names):
            return ", ".join(names[:4]) + (f", ... ({len(names) - 4} more)" if len(names) > 4 else "")
        problems = [f"{label}: {first(names)}" for label, names in
                    (("other sizes", reshaped), ("missing", missing), ("unexpected", unexpected)) if names]
        raise CheckpointError(f"{path}: the weights do not fit the model the config builds ({'; '.join(problems)})")
    module.load_state_dict(state, strict=False)


@dataclass
class WarmStart:
    """What :func:`warm_start` did, by parameter name."""

    source: str
    copied: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)  # input channels added, zero weights for them
    narrowed: list[str] = field(default_factory=list)  # input channels dropped: the leading ones kept
    fresh: list[str] = field(default_factory=list)  # not in the source or another shape: kept as built
    folded: list[str] = field(default_factory=list)  # the source's null-label embedding, moved into a bias
    unused: list[str] = field(default_factory=list)  # in the source only

    def summary(self) -> str:
        lines = [f"warm start from {self.source}: {len(self.copied)} tensors copied, {len(self.widened)} widened "
                 f"(new input channels start at zero), {len(self.narrowed)} narrowed (trailing input channels "
                 f"dropped), {len(self.fresh)} new, {len(self.unused)} unused"]
        for label, names in (("widened", self.widened), ("narrowed", self.narrowed), ("folded", self.folded),
                             ("new", self.fresh), ("unused", self.unused)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
                lines.append(f"  {label}: {shown}")
        return "\n".join(lines)


def _counterparts(name: str) -> tuple[str, str, str]:
    """A parameter name as itself, without and with TextConditioned's ``backbone.`` prefix."""
    return name, name.removeprefix("backbone."), "backbone." + name


def _null_label_vector(source: dict[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
    """The null-label row of a LabelEmbedding in a state dict (plain table: its last row)."""
    if prefix + "label_embed.null" in source:
        return source[prefix + "label_embed.null"]
    if prefix + "label_embed.table.weight" in source:
        return source[prefix + "label_embed.table.weight"][-1]
    return None


def _fold_null_label(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], report: WarmStart) -> None:
    if any(".label_embed." in "." + k for k in target):
        return  # the target keeps class labels: nothing to fold
    for key, bias in target.items():
        if not key.endswith("noise_embed.mlp.2.bias"):
            continue
        stem = key[: -len("noise_embed.mlp.2.bias")]
        for prefix in _counterparts(stem):
            null = _null_label_vector(source, prefix)
            if null is not None and null.shape == bias.shape:
                with torch.no_grad():
                    bias.add_(null.to(bias.device, bias.dtype))
                report.folded.append(f"{prefix}label_embed null -> {key}")
                break


def warm_start(module: torch.nn.Module, path: str | Path) -> WarmStart:
    """Initialise ``module`` from another run's checkpoint (its EMA weights when kept) for fine-tuning.

    Tensors with the same name and shape are copied. A weight that only gained input channels
    (dimension 1, e.g. a first convolution that now also reads [mask, known part] or a mel
    spectrogram) gets the old weights for the old channels and zeros for the new ones, so the
    fine-tuned model starts as exactly the source model (as Stable Diffusion's inpainting model was
    started from the text-to-image one). A weight that lost trailing input channels keeps the leading
    ones: the source model with those inputs at zero (e.g. a frame-prediction model, whose "nothing
    given" mask and frames are zeros, starting a plain generator). A text-conditioned model (``backbone.`` prefix) starts
    from a plain backbone's checkpoint and back. A class-conditional source started into a model
    without class labels (captions instead) has its null-label embedding added to the bias of the
    noise-level embedding's last layer (the two are summed, multidiff.nn.embeddings), so the new
    model starts as the source's unconditional model. Everything else keeps its fresh
    initialisation and is listed. Raises ValueError naming the checkpoint when no tensor matches at all.
    """
    folder = resolve(path, need=WEIGHTS)
    weights = folder / "ema.safetensors"
    if not has_weights(weights):
        weights = folder / "model.safetensors"
    source = read_module_state(weights)
    report = WarmStart(str(weights))
    used = set()
    target = module.state_dict()
    with torch.no_grad():
        for key, tensor in target.items():
            for name in _counterparts(key):
                if name in source:
                    break
            else:
                report.fresh.append(key)
                continue
            src = source[name].to(tensor.device, tensor.dtype)
            used.add(name)
            if src.shape == tensor.shape:
                tensor.copy_(src)
                report.copied.append(key)
            elif (src.ndim == tensor.ndim >= 2 and src.shape[0] == tensor.shape[0]
                  and src.shape[2:] == tensor.shape[2:]):
                change = f"{key} {tuple(src.shape)} -> {tuple(tensor.shape)}"
                if src.shape[1] < tensor.shape[1]:
                    tensor.zero_()
                    tensor[:, :src.shape[1]].copy_(src)
                    report.widened.append(change)
                else:
                    tensor.copy_(src[:, :tensor.shape[1]])
                    report.narrowed.append(change)
            else:
                report.fresh.append(f"{key} {tuple(src.shape)} -> {tuple(tensor.shape)}")
    _fold_null_label(target, source, report)
    report.unused = sorted(set(source) - used)
    if not report.copied and not report.widened:
        raise ValueError(f"{weights}: no tensor matches the model by name and shape; is this a checkpoint of "
                         f"the same backbone? (its first keys: {sorted(source)[:4]})")
    return report  # state_dict() tensors share the parameters' storage: copied in place


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
def _discard(folder: Path) -> None:
    """Delete a folder so that no crash leaves it half-deleted under its name: rename, then remove."""
    trash = folder.parent / f".trash-{folder.name}-{os.getpid()}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def begin(root: Path, name: str) -> Path:
    """Create an empty ``.tmp-<name>`` folder to write a checkpoint into (main process)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:  # debris of an interrupted save or delete
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    return tmp


def commit(root: Path, name: str, keep: int) -> Path:
    """Publish ``.tmp-<name>`` as ``<name>`` (replacing a folder of that name), point ``latest`` at
    it, keep the newest ``keep``."""
    tmp, final = root / f".tmp-{name}", root / name
    missing = missing_files(tmp)
    if missing:
        raise RuntimeError(f"checkpoint {tmp} is incomplete (missing {missing}); not publishing it")
    _fsync(tmp)
    if final.exists():  # an earlier run's checkpoint at this position: this run's replaces it
        _discard(final)
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


def missing_files(folder: Path) -> list[str]:
    """The files a checkpoint folder lacks: those its state.json lists (REQUIRED and the legacy set
    for older checkpoints, or when state.json itself is missing or unreadable)."""
    listed = list(REQUIRED)
    try:
        with open(folder / "state.json") as f:
            listed += json.load(f).get("files", LEGACY_FILES)
    except (OSError, ValueError, AttributeError):
        listed += LEGACY_FILES
    return sorted({f for f in listed if not has_weights(folder / f)})


def _sharded_part(path: Path) -> tuple[Path, str] | None:
    """(checkpoint folder, "model" or "ema") when ``path`` names the weights of a sharded
    checkpoint (trainer.sharding=fsdp), which live in its ``sharded/`` folder instead."""
    from .sharding import has_sharded

    path = Path(path)
    part = {"model.safetensors": "model", "ema.safetensors": "ema"}.get(path.name)
    if part is None or path.is_file() or not has_sharded(path.parent):
        return None
    return path.parent, part


def has_weights(path: Path) -> bool:
    """A checkpoint file, or model / EMA weights held as shards (and the shard folder itself)."""
    path = Path(path)
    if path.is_file():
        return True
    if path.name == "sharded":
        from .sharding import has_sharded

        return has_sharded(path.parent)
    found = _sharded_part(path)
    if found is None:
        return False
    from .sharding import sharded_parts

    try:
        return found[1] in sharded_parts(found[0])
    except CheckpointError:  # unreadable shard metadata: an incomplete checkpoint, passed over like one
        return False


def _numbered(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if NAME_RE.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=position)


def position(folder: Path) -> int:
    """Samples seen at a checkpoint, from its folder name."""
    return int(NAME_RE.match(Path(folder).name).group(1))


def list_checkpoints(root: Path, *, report: bool = False) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first. Folders named like a checkpoint but
    missing files (a copy cut short, a deletion by another tool) are skipped; with ``report``
    each is named on stderr."""
    complete = []
    for folder in _numbered(root):
        missing = missing_files(folder)
        if not missing:
            complete.append(folder)
        elif report:
            print(f"note: ignoring incomplete checkpoint folder {folder} (missing {', '.join(missing)})",
                  file=sys.stderr)
    return complete


def prune(root: Path, keep: int) -> None:
    latest = (root / LATEST).resolve() if (root / LATEST).exists() else None
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(len(ckpts) - keep, 0)]:
        if latest is None or old.resolve() != latest:
            _discard(old)


def set_aside(root: Path, start: int, keep: Path | None = None) -> tuple[Path, list[str]] | None:
    """Move the checkpoints at or beyond ``start`` samples seen (an earlier run's, ahead of a run that
    starts at ``start``), but ``keep``, into ``superseded-<time>/``: a run never mixes another run's
    later checkpoints into its own, and nothing is deleted. Returns (that folder, the names moved)."""
    import time

    keep = keep.resolve() if keep is not None else None
    ahead = [p for p in _numbered(root) if position(p) >= start and p.resolve() != keep]
    if not ahead:
        return None
    target = root / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = root / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    target.mkdir()
    for p in ahead:
        os.rename(p, target / p.name)
    link = root / LATEST
    if link.is_symlink() and not link.exists():  # it pointed at a folder moved aside
        link.unlink()
    _fsync(root)
    return target, [p.name for p in ahead]


def resolve(path: str | Path, *, need: tuple[str, ...] | None = None) -> Path:
    """A checkpoint folder from a checkpoint folder, a ``latest`` link, a checkpoints folder or a
    run's out_dir (then the newest complete checkpoint, whatever ``latest`` says). ``need``: the
    files a folder given directly must hold (default: all, as for resuming; weights for a warm
    start). Raises FileNotFoundError with what was looked for, CheckpointError for an incomplete
    checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir() and (NAME_RE.match(path.resolve().name) or (path / "state.json").exists()):
        missing = missing_files(path) if need is None else [f for f in need if not has_weights(path / f)]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
        return path.resolve()
    for root in (path, path / "checkpoints"):
        ckpts = list_checkpoints(root, report=True)
        if ckpts:
            return ckpts[-1].resolve()
    raise FileNotFoundError(f"no checkpoint at {str(path)!r} (looked for a folder with state.json and "
                            f"complete ckpt-* folders)")


def find_latest(out_dir: str | Path) -> Path | None:
    try:
        return resolve(Path(out_dir) / "checkpoints")
    except FileNotFoundError:
        return None
