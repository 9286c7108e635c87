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
from dataclasses import dataclass, field
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
    folder = resolve(path)
    weights = folder / "ema.safetensors"
    if not weights.exists():
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
