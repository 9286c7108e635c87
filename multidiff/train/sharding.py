"""Fully sharded data parallel training (``trainer.sharding: fsdp``): torch's FSDP2
(``torch.distributed.fsdp.fully_shard``) over every process, on GPUs or on CPUs (gloo).

Every block of a backbone (each element of its ``nn.ModuleList``s) becomes one FSDP unit, and the
backbone itself the root one: each process keeps 1/P of the weights, gradients and optimizer state
and gathers a block's weights only while it runs. The EMA copy is sharded the same way, so its
update stays local. accelerate's FSDP plugin is not used: in accelerate 1.x it is reached only
from GPU launches, and one code path for both keeps CPU tests honest.

Checkpoints are written with torch.distributed.checkpoint (``sharded/`` in the checkpoint folder:
every process writes its own shards, no process gathers the model), resume on any process count,
and read in one process without a process group (:func:`read_full_state`), which is how sampling,
evaluation and ``multidiff export`` turn them into single-file weights. torch.distributed.checkpoint
stores its ``.metadata`` with pickle: load sharded checkpoints only from sources you trust (the
unsharded ones are safetensors and JSON only).
"""
from __future__ import annotations

import socket
from pathlib import Path

import torch
from torch import nn

SHARDED = "sharded"  # the checkpoint sub-folder torch.distributed.checkpoint writes


def ensure_process_group(device: torch.device) -> None:
    """A process group for FSDP: the launcher's (accelerate / torchrun), or a one-process one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def shard_blocks(module: nn.Module, device: torch.device) -> nn.Module:
    """Apply fully_shard to every element of every ModuleList of ``module`` (innermost lists first),
    then to ``module``; in place. Returns the module."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    ensure_process_group(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    for blocks in reversed(lists):  # reversed pre-order: nested lists before the lists that hold them
        for block in blocks:  # frozen blocks too: the EMA copy gets the same units as the model
            if next(block.parameters(), None) is not None and not _is_sharded(block):
                fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_sharded(module: nn.Module) -> bool:
    """True for a module prepared by :func:`shard_blocks`."""
    return _is_sharded(module)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (DTensor), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded module on the CPU of process 0 (an empty dict elsewhere).
    Every process must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(folder: Path, model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer) -> None:
    """Write model, EMA and optimizer state as torch.distributed.checkpoint shards under
    ``folder/sharded`` (every process calls it and writes its own part)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    dcp.save(state, checkpoint_id=str(Path(folder) / SHARDED))


def load(folder: Path, model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer) -> None:
    """Read what :func:`save` wrote into sharded modules and optimizer, on any process count."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    parts = sharded_parts(folder)
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None and "ema" in parts:
        state["ema"] = get_model_state_dict(ema)
    dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if ema is not None:  # a checkpoint without an EMA starts it from the weights, as the unsharded resume does
        set_model_state_dict(ema, state.get("ema", state["model"]))


def has_sharded(folder: Path) -> bool:
    """True when ``folder`` holds a sharded checkpoint's metadata (its files are checked against
    state.json's list by multidiff.train.checkpoint.missing_files)."""
    return (Path(folder) / SHARDED / ".metadata").is_file()


def _metadata(folder: Path):
    import torch.distributed.checkpoint as dcp

    try:
        return dcp.FileSystemReader(str(Path(folder) / SHARDED)).read_metadata()
    except Exception as err:  # noqa: BLE001 - a missing or corrupt .metadata
        from ..errors import CheckpointError

        raise CheckpointError(f"{Path(folder) / SHARDED}: not a readable sharded checkpoint ({err})") from None


def sharded_parts(folder: Path) -> set[str]:
    """Which of "model", "ema", "optimizer" a sharded checkpoint holds."""
    return {key.split(".", 1)[0] for key in _metadata(folder).state_dict_metadata}


def read_full_state(folder: Path, which: str) -> dict[str, torch.Tensor]:
    """The whole ``which`` ("model" or "ema") state dict of a sharded checkpoint, read in this one
    process without a process group: the single-file view of the shards (sampling, export, warm starts)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = _metadata(folder)
    prefix = which + "."
    state = {key: torch.empty(md.size, dtype=md.properties.dtype) for key, md in meta.state_dict_metadata.items()
             if key.startswith(prefix) and isinstance(md, TensorStorageMetadata)}
    if not state:
        from ..errors import CheckpointError

        raise CheckpointError(f"{Path(folder) / SHARDED}: holds no {which!r} weights")
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(Path(folder) / SHARDED)), no_dist=True)
    return {key[len(prefix):]: value for key, value in state.items()}
