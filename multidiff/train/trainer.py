"""The training loop on accelerate: one script for one CPU, one GPU, or many through
``accelerate launch``.

One optimizer step (global batch B over P processes and A accumulation micro-steps):

    for each micro-batch (B / (P A) samples, this process's slice of the stream):
        per-sample loss (batch,) = DiffusionLoss(denoiser, x0, cond, per-sample generators)
        backward(sum / (B / P))            # no gradient sync but on the last micro-batch
    loss = all-reduce(sum) / B             # the global mean, identical on every process
    if loss or gradient norm is NaN/inf:   skip the update, count it, stop after too many in a row
    clip gradients; lr = schedule(samples seen); optimizer step; EMA update

All durations (training length, warm-up, log / checkpoint / preview intervals, EMA
half-life) are in samples seen. SIGTERM / SIGINT finish the current step, save a
checkpoint and return; ``Trainer.fit`` then reports status "interrupted".
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..media import log_media
from . import checkpoint as ckpt
from . import sharding
from .build import LRSchedule, build_dataset, build_denoiser, build_loss, build_model, build_optimizer, count_parameters
from .config import Config, ConfigError, autoencoder_modality_params, config_from_json
from .data import make_loader, mix_seed, sample_generators
from .ema import EMA
from .modality import get_modality
from .registry import DataSpec
from .sampling import Conditioning, default_labels, generate
from .tracking import CSVLog, flat_hparams, write_loss_curve


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a NaN or infinite loss or gradient."""


@dataclass
class TrainState:
    """Everything about the loop's position that a checkpoint must restore (state.json)."""

    step: int = 0                 # batches processed, skipped ones included
    samples_seen: int = 0         # the data stream's position
    updates: int = 0              # optimizer steps taken
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    log_loss_sum: float = 0.0     # running sums of the current log interval
    log_loss_count: int = 0
    elapsed_s: float = 0.0


@dataclass
class FitResult:
    status: str                   # "finished" or "interrupted"
    out_dir: Path
    checkpoint: Path | None
    samples_seen: int
    steps: int
    nonfinite_total: int
    last_loss: float
    csv: Path
    previews: list = field(default_factory=list)


def crossed(before: int, after: int, every: int) -> bool:
    """Did the count pass a multiple of ``every`` going from before to after? (every 0 = never)"""
    return every > 0 and before // every != after // every


def release_single_process_state(cpu: bool, mixed_precision: str, dynamo_backend: str = "no") -> None:
    """accelerate keeps one device, precision and compile backend per process and refuses another
    (or, for the backend, silently keeps the first). One process that is not a distributed launch
    (a notebook training on cuda, then sampling on cpu; a second run with compile on) gets fresh state."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    state = AcceleratorState()
    plugin = getattr(state, "dynamo_plugin", None)
    backend = str(getattr(getattr(plugin, "backend", None), "value", "no")).lower()
    if (state.device.type == "cpu") != cpu or state._mixed_precision != mixed_precision or backend != dynamo_backend:
        AcceleratorState._reset_state(reset_partial_state=True)


def make_accelerator(config: Config):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    t = config.trainer
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", "'cuda' was asked for but torch.cuda.is_available() is False")
    out_dir = Path(t.out_dir)
    # "auto" without a GPU must say cpu=True: otherwise accelerate runs each launched process on
    # its own instead of as one multi-CPU (gloo) job
    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    mixed_precision = "no" if t.mixed_precision == "fp32" else t.mixed_precision
    dynamo_backend = "inductor" if t.compile else "no"
    release_single_process_state(cpu, mixed_precision, dynamo_backend)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        log_with=None if t.tracker == "none" else t.tracker,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
        dynamo_backend=dynamo_backend,
        step_scheduler_with_optimizer=False,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}: "
                           f"each would train alone (check trainer.device={t.device!r} against the launch)")
    return accelerator


def drop_conditioning(cond: dict, drop: torch.Tensor, null_label: int | None) -> dict:
    """Condition dropout for classifier-free guidance (Ho & Salimans 2022): samples where ``drop``
    (batch,) is True get the null label (``null_label``; None leaves labels alone) and the empty caption."""
    cond = dict(cond)
    if null_label is not None and "label" in cond:
        cond["label"] = torch.where(drop.to(cond["label"].device), torch.full_like(cond["label"], null_label), cond["label"])
    if "text" in cond:
        cond["text"] = ["" if d else c for d, c in zip(drop.tolist(), cond["text"])]
    return cond


class Trainer:
    """Builds everything from a validated :class:`Config` and runs :meth:`fit`.

    ``resume``: "config" (default) follows trainer.resume; otherwise "auto", None or a
    checkpoint path, as trainer.resume would be.

    Attributes of interest: ``accelerator``, ``model`` (prepared backbone), ``denoiser``,
    ``loss_fn`` (per-sample loss callable), ``optimizer``, ``ema`` (None without EMA),
    ``spec`` (DataSpec), ``state`` (TrainState), ``out_dir``.
    """

    def __init__(self, config: Config, *, resume: str | None = "config"):
        from accelerate.utils import set_seed

        self.config = config
        t = config.trainer
        self.accelerator = acc = make_accelerator(config)
        self.world, self.rank = acc.num_processes, acc.process_index
        if t.batch_size % (self.world * t.grad_accum):
            raise ConfigError("trainer.batch_size", f"{t.batch_size} does not divide into {self.world} processes x "
                              f"{t.grad_accum} accumulation steps")
        self.local_batch = t.batch_size // self.world
        self.micro_batch = self.local_batch // t.grad_accum
        self.out_dir = Path(t.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        set_seed(t.seed)

        self.dataset = build_dataset(config)
        self.spec: DataSpec = self.dataset.spec
        backbone = build_model(config, self.spec).to(acc.device)
        self.warm_start = None
        if config.model.init_from:  # before the EMA copies the weights; a resume below overrides both
            self.warm_start = ckpt.warm_start(backbone, config.model.init_from)
        self.ema = EMA(backbone, t.ema) if t.ema.kind != "none" else None
        self.sharded = t.sharding == "fsdp"
        if self.sharded:  # FSDP2 units per block; the EMA copy sharded alike so its update stays local
            sharding.shard_blocks(backbone, acc.device)
            if self.ema is not None:
                sharding.shard_blocks(self.ema.module, acc.device)
        optimizer = build_optimizer(backbone, config.optimizer)
        if self.sharded:  # accelerate would wrap the sharded model in DDP: it prepares the optimizer only
            self.model, self.optimizer = backbone, acc.prepare(optimizer)
        else:
            self.model, self.optimizer = acc.prepare(backbone, optimizer)
        self._unwrapped: torch.nn.Module | None = None
        self.autoencoder = config.objective.kind == "autoencoder"
        self.denoiser = build_denoiser(self.model, config.objective)
        teacher = None
        if config.objective.kind == "distillation":  # the frozen teacher, in eval mode, on this device
            teacher_model, teacher_config, *_ = load_for_sampling(config.objective.distillation.teacher, acc.device)
            teacher = build_denoiser(teacher_model, teacher_config.objective)
        self.loss_fn = build_loss(config.objective, self.denoiser.schedule, self.spec.modality,
                                  autoencoder_modality_params(config) if self.autoencoder else None, teacher)
        if self.autoencoder:  # the loss calls the model's encode / decode itself
            if self.accelerator.num_processes > 1:
                raise ValueError("objective.kind autoencoder trains in one process for now (its loss calls "
                                 "encode / decode, which a DistributedDataParallel wrapper does not synchronise)")
            self.denoiser = self.model
        self.lr_schedule = LRSchedule(config.optimizer, t.duration_samples)
        self.state = TrainState()
        self.num_parameters = count_parameters(backbone)
        self._stop_signal: int | None = None
        self._last_grad_norm: float | None = None
        self._lr = self.lr_schedule.lr(0)
        self._last_preview: int | None = None
        self._rate_from = (time.perf_counter(), 0)  # (time, samples seen) of the last log
        self._loaded_at: tuple[int, int] | None = None  # (step, samples seen) of the checkpoint resumed from
        self.resume_changes: list[str] = []  # settings that differ from the resumed checkpoint's, as lines

        source = t.resume if resume == "config" else resume
        self.resumed_from: Path | None = None
        if source == "auto":
            self.resumed_from = ckpt.find_latest(self.out_dir)
        elif source:
            self.resumed_from = ckpt.resolve(source)
        if self.resumed_from is not None:
            self.load(self.resumed_from)

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def unwrapped(self) -> torch.nn.Module:
        """The backbone without DDP / compile wrappers (same parameters as ``model``)."""
        if self._unwrapped is None:
            self._unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return self._unwrapped

    def sampling_model(self) -> torch.nn.Module:
        """The EMA network when kept and asked for (sampling.use_ema), else the trained one."""
        if self.ema is not None and self.config.sampling.use_ema:
            return self.ema.module
        return self.unwrapped()

    def batches(self):
        """This process's batches from the current stream position on (endless)."""
        t = self.config.trainer
        loader = make_loader(self.dataset, seed=t.seed, start=self.state.samples_seen, batch_size=t.batch_size,
                             rank=self.rank, world=self.world, num_workers=self.config.data.num_workers,
                             pin_memory=self.accelerator.device.type == "cuda")
        return iter(loader)

    def _generators(self, positions: torch.Tensor):
        t = self.config.trainer
        if t.noise_generators == "per_sample":
            return sample_generators(t.seed, positions, self.accelerator.device)
        # one generator for this process and step, seeded from (seed, rank, first position)
        g = torch.Generator(self.accelerator.device)
        g.manual_seed(mix_seed(mix_seed(t.seed, -(2**40) - self.rank), int(positions[0])))
        return g

    def _cond(self, batch: dict, sl: slice, gens) -> dict | None:
        """Conditioning of a micro-batch: every tensor batch key but x / position / loss_mask, and
        the captions (``text``) when the model has a text encoder. With probability
        objective.cond_drop_prob a sample loses its conditioning (label -> null label, caption ->
        "": one draw per sample drops both), so one model also learns the unconditional denoiser."""
        device = self.accelerator.device
        cond = {k: v[sl].to(device) for k, v in batch.items()
                if k not in ("x", "position", "loss_mask") and torch.is_tensor(v)}
        uses_text = self.config.model.text_encoder.kind != "none"
        if uses_text:
            if "text" not in batch:
                raise KeyError(f"model.text_encoder is {self.config.model.text_encoder.kind!r} but data set "
                               f"{self.config.data.name!r} gives no 'text' (captions) in its items")
            cond["text"] = list(batch["text"][sl])
        if not cond:
            return None
        p = self.config.objective.cond_drop_prob
        has_label = "label" in cond and self.spec.num_classes > 0
        if p > 0 and (has_label or uses_text):
            n = len(cond["text"]) if uses_text else cond["label"].shape[0]
            if isinstance(gens, torch.Generator):
                u = torch.rand(n, generator=gens, device=device)
            else:
                u = torch.stack([torch.rand((), generator=g, device=device) for g in gens])
            cond = drop_conditioning(cond, u < p, self.spec.num_classes if has_label else None)
        return cond

    # ------------------------------------------------------------------ one step
    def forward_backward(self, batch: dict) -> float:
        """Accumulate gradients of the global-mean loss over this process's batch.

        batch: {"x": (B/P, *sample_shape), "position": (B/P,), ...}. Returns the loss averaged
        over the global batch (the same on every process); gradients are synchronised.
        """
        acc, t = self.accelerator, self.config.trainer
        x_all = batch["x"].to(acc.device, non_blocking=True)
        positions = batch["position"]
        total = torch.zeros((), device=acc.device, dtype=torch.float32)
        for j in range(t.grad_accum):
            sl = slice(j * self.micro_batch, (j + 1) * self.micro_batch)
            gens = self._generators(positions[sl])
            cond = self._cond(batch, sl, gens)
            sync = j == t.grad_accum - 1
            if self.sharded:  # reduce-scatter the gradients on the last micro-batch only
                self.model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or self.sharded else acc.no_sync(self.model), \
                    acc.autocast() if self.sharded else contextlib.nullcontext():
                extra = {"mask": batch["loss_mask"][sl].to(acc.device)} if "loss_mask" in batch else {}
                per_sample = self.loss_fn(self.denoiser, x_all[sl], cond, gens, **extra)  # (micro,)
                acc.backward(per_sample.sum() / self.local_batch)
            total = total + per_sample.detach().float().sum()
        return float(acc.reduce(total, "sum")) / t.batch_size

    def apply_update(self, loss: float) -> bool:
        """Clip, step and update the EMA if the loss and gradients are finite; else skip and count.

        Returns whether the update was applied. Raises NonFiniteLossError after
        trainer.max_nonfinite_in_a_row skipped steps in a row.
        """
        acc, t, s = self.accelerator, self.config.trainer, self.state
        samples_after = s.samples_seen + t.batch_size
        finite = math.isfinite(loss)
        grad_norm = None
        if finite:
            max_norm = self.config.optimizer.grad_clip or float("inf")
            norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            # with fp16 loss scaling an overflow is routine: the scaler skips that step itself
            finite = math.isfinite(grad_norm) or t.mixed_precision == "fp16"
        s.step += 1
        s.samples_seen = samples_after
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            s.nonfinite_total += 1
            s.nonfinite_in_a_row += 1
            if s.nonfinite_in_a_row >= t.max_nonfinite_in_a_row:
                raise NonFiniteLossError(
                    f"the loss or gradient was NaN/inf for {s.nonfinite_in_a_row} steps in a row "
                    f"(step {s.step}, {s.samples_seen} samples seen, {s.nonfinite_total} skipped in all); stopping "
                    f"without saving. Lower optimizer.lr, set optimizer.grad_clip, or check the data. "
                    f"Last checkpoint: {ckpt.find_latest(self.out_dir) or 'none'}")
            return False
        s.nonfinite_in_a_row = 0
        self._lr = self.lr_schedule.apply(self.optimizer, samples_after)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if getattr(self.optimizer, "step_was_skipped", False):  # fp16 overflow: the scaler backed off
            return False
        if self.ema is not None:
            self.ema.update(self.unwrapped(), samples_after, t.batch_size)
        s.updates += 1
        self._last_grad_norm = grad_norm
        s.log_loss_sum += loss
        s.log_loss_count += 1
        return True

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write a checkpoint at the current position (all processes call this)."""
        acc, s = self.accelerator, self.state
        name = ckpt.checkpoint_name(s.samples_seen)
        final = self.ckpt_root / name
        bad = torch.tensor(int(not all(bool(torch.isfinite(sharding.local(p)).all()) for p in self.unwrapped().parameters())),
                           device=acc.device)
        if self.world > 1:  # under sharding each process sees only its part of the weights
            bad = acc.reduce(bad, "max")
        if bool(bad):
            raise NonFiniteLossError("the weights contain NaN/inf; refusing to write a checkpoint")
        if (final.exists() and self.resumed_from is not None and final.resolve() == self.resumed_from.resolve()
                and self._unchanged_since_load()):  # e.g. a signal right after resuming: nothing new to write
            acc.wait_for_everyone()
            return final
        if self.is_main:
            ckpt.begin(self.ckpt_root, name)
        acc.wait_for_everyone()
        tmp = self.ckpt_root / f".tmp-{name}"
        ckpt.write_json(tmp / f"rng-{self.rank}.json", ckpt.rng_state())
        acc.wait_for_everyone()
        if self.sharded:  # every process writes its own shards
            sharding.save(tmp, self.model, None if self.ema is None else self.ema.module, self.optimizer.optimizer)
            acc.wait_for_everyone()
        if self.is_main:
            if not self.sharded:
                ckpt.write_module(tmp / "model.safetensors", self.unwrapped())
                if self.ema is not None:
                    ckpt.write_module(tmp / "ema.safetensors", self.ema.module)
                ckpt.write_state(tmp, "optimizer", self.optimizer.state_dict())
            state = {
                "format": 1,
                "train": asdict(s),
                "spec": self.spec.to_json(),
                "batch_size": self.config.trainer.batch_size,
                "num_processes": self.world,
                "sharding": self.config.trainer.sharding,
                "lr": self._lr,
                "lr_schedule": self.lr_schedule.state_dict(),
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
                "ema": None if self.ema is None else {"kind": self.ema.config.kind, "gamma": self.ema.gamma},
                "num_parameters": self.num_parameters,
                "model": self.config.model.name,
                "torch": torch.__version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            ckpt.write_json(tmp / "config.json", self.config.to_dict())
            state["files"] = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                                    if p.is_file())  # what a complete copy holds (each shard file too)
            ckpt.write_json(tmp / "state.json", state)
            ckpt.commit(self.ckpt_root, name, self.config.trainer.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> None:
        """Restore weights, EMA, optimizer, scaler, loop state and RNG states from a checkpoint.

        Raises CheckpointError, naming the file or the setting, when a file is unreadable or the
        checkpoint belongs to another model, data set or optimizer than the config's."""
        path = Path(path)
        state = ckpt.read_json(path / "state.json")
        try:
            saved_spec = DataSpec.from_json(state["spec"])
            train_state = TrainState(**state["train"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path / 'state.json'}: not a checkpoint state ({type(err).__name__}: {err})") from None
        if saved_spec.sample_shape != self.spec.sample_shape or saved_spec.num_classes != self.spec.num_classes:
            raise CheckpointError(f"checkpoint {path} was trained on {saved_spec}, the data now gives {self.spec}; "
                                  f"train into a new trainer.out_dir, or start from its weights with model.init_from")
        saved_config = ckpt.read_json(path / "config.json")
        conflicts = resume_conflicts(saved_config, self.config.to_dict(), getattr(self.unwrapped(), "config", None))
        if conflicts:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {'; '.join(conflicts)}. Train into "
                                  f"a new trainer.out_dir, set trainer.resume=null to start afresh here, or start "
                                  f"from its weights with model.init_from")
        if sharding.has_sharded(path) != self.sharded:
            raise CheckpointError(f"checkpoint {path} was written with trainer.sharding="
                                  f"{state.get('sharding', 'none')!r}; resume it with the same setting (or start from "
                                  f"its weights with model.init_from)")
        if self.sharded:  # on any process count: torch.distributed.checkpoint reshards
            try:
                sharding.load(path, self.model, None if self.ema is None else self.ema.module, self.optimizer.optimizer)
            except CheckpointError:
                raise
            except Exception as err:  # noqa: BLE001 - another model or optimizer than the shards hold
                raise CheckpointError(f"{path / sharding.SHARDED}: the shards do not fit this model / optimizer "
                                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        else:
            ckpt.load_module(self.unwrapped(), path / "model.safetensors")
            if self.ema is not None:
                ema_file = path / "ema.safetensors"
                ckpt.load_module(self.ema.module, ema_file if ema_file.exists() else path / "model.safetensors")
            optimizer_state = ckpt.read_state(path, "optimizer")
            try:
                self.optimizer.load_state_dict(optimizer_state)
            except (KeyError, ValueError, RuntimeError) as err:
                raise CheckpointError(f"{path / 'optimizer.safetensors'}: the optimizer state does not fit optimizer "
                                      f"{self.config.optimizer.name!r} ({type(err).__name__}: {err})") from None
        if state.get("scaler") and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.state = train_state
        self._loaded_at = (train_state.step, train_state.samples_seen)
        self._lr = state.get("lr", self._lr)
        rng_file = path / f"rng-{self.rank}.json"
        if rng_file.exists():
            ckpt.set_rng_state(ckpt.read_json(rng_file))
        self.resume_changes = changed_settings(saved_config, self.config.to_dict())
        saved_horizon = (state.get("lr_schedule") or {}).get("duration_samples")
        if (self.config.optimizer.schedule in ("cosine", "linear") and saved_horizon is not None
                and saved_horizon != self.lr_schedule.duration_samples):
            old = LRSchedule(config_from_json(saved_config).optimizer, saved_horizon)
            s = train_state.samples_seen
            self.resume_changes.append(
                f"warning: the {self.config.optimizer.schedule} learning-rate schedule now ends at "
                f"{self.lr_schedule.duration_samples:,} samples instead of {saved_horizon:,} "
                f"(trainer.duration_samples): at {s:,} samples seen the lr moves from {old.lr(s):.4g} to "
                f"{self.lr_schedule.lr(s):.4g}")
        if (self.config.objective.kind == "consistency" and saved_horizon is not None
                and saved_horizon != self.lr_schedule.duration_samples):
            s, stages = train_state.samples_seen, self.config.objective.consistency.stages
            was, now = (min(int(s / d * stages), stages - 1) for d in (saved_horizon, self.lr_schedule.duration_samples))
            if was != now:
                self.resume_changes.append(
                    f"warning: the consistency stages now span {self.lr_schedule.duration_samples:,} samples instead "
                    f"of {saved_horizon:,} (trainer.duration_samples): at {s:,} samples seen the stage moves from "
                    f"{was} to {now}")

    def _unchanged_since_load(self) -> bool:
        return self._loaded_at == (self.state.step, self.state.samples_seen)

    # ------------------------------------------------------------------ previews and logs
    def gathered_sampling_model(self) -> torch.nn.Module | None:
        """The sampling model whole, on the main process (None elsewhere): under sharding every
        process gathers its shards (all must call this) into a plain copy; else ``sampling_model()``."""
        if not self.sharded:
            return self.sampling_model() if self.is_main else None
        state = sharding.full_state_dict(self.sampling_model())
        if not self.is_main:
            return None
        with torch.random.fork_rng(devices=[]):  # a fresh init must not move the RNG a resume restores
            model = build_model(self.config, self.spec)
        model.load_state_dict(state)
        return model.to(self.accelerator.device).eval()

    def preview(self) -> list:
        """Sample with the EMA model and write the modality's preview files (main process)."""
        self._last_preview = self.state.samples_seen
        if self.sharded:
            whole = self.gathered_sampling_model()  # a collective: before the main-process-only part
        if not self.is_main:
            return []
        fn = get_modality(self.spec.modality).preview
        if fn is None:
            return []
        sampling = self.config.sampling
        num = self.config.trainer.preview_samples
        if self.autoencoder:  # reconstructions of the first items (posterior means)
            items = [self.dataset[k] for k in range(min(num, len(self.dataset)))]
            x = torch.stack([it["x"] if isinstance(it, dict) else it for it in items]).to(self.accelerator.device)
            model = self.sampling_model()
            with torch.no_grad():
                recon = model.decode(model.encode(x).latent_dist.mean).sample.float().cpu()
            return list(fn(torch.cat([x.float().cpu(), recon]), self.out_dir / "previews",
                           f"recon-{self.state.samples_seen:012d}", spec=self.spec))
        labels = default_labels(num, self.spec)
        samples = generate(whole if self.sharded else self.sampling_model(), self.config.objective, self.spec, sampling, Conditioning(labels=labels),
                           num=num, device=self.accelerator.device)
        return list(fn(samples, self.out_dir / "previews", f"samples-{self.state.samples_seen:012d}", labels=labels,
                       spec=self.spec))

    def _side_effect(self, what: str, fn, *args):
        """Run a picture or tracker call that must not end a training run: errors are reported."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a plotting or tracker failure must not lose a long run
            self.accelerator.print(f"warning: {what} at {self.state.samples_seen} samples failed: "
                                   f"{type(e).__name__}: {e}")
            return None

    def _safe_preview(self) -> list:
        """A preview that cannot end a training run: errors are reported and training goes on."""
        if self._last_preview == self.state.samples_seen:
            return []
        try:
            return self.preview()
        except Exception as e:  # noqa: BLE001 - a broken preview hook must not lose a long run
            self.accelerator.print(f"warning: preview at {self.state.samples_seen} samples failed: "
                                   f"{type(e).__name__}: {e}")
            return []

    def _log(self, csv: CSVLog | None) -> float | None:
        """Write the mean loss of the interval since the last log (CSV + trackers); returns it."""
        s = self.state
        if s.log_loss_count == 0:
            return None
        now = time.perf_counter()
        rate = (s.samples_seen - self._rate_from[1]) / max(now - self._rate_from[0], 1e-9)
        self._rate_from = (now, s.samples_seen)
        loss = s.log_loss_sum / s.log_loss_count
        row = {"step": s.step, "samples_seen": s.samples_seen, "loss": loss, "lr": self._lr,
               "grad_norm": self._last_grad_norm, "nonfinite_total": s.nonfinite_total,
               "samples_per_sec": round(rate, 2), "elapsed_s": round(s.elapsed_s, 3)}
        if csv is not None:
            csv.append(row)
        self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "samples_seen"},
                             step=s.samples_seen)
        s.log_loss_sum, s.log_loss_count = 0.0, 0
        return loss

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _should_stop(self) -> bool:
        stop = self._stop_signal is not None
        if self.world > 1:  # any process signalled -> all stop at the same step
            flag = torch.tensor(int(stop), device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(flag, "max"))
        return stop

    # ------------------------------------------------------------------ the loop
    def fit(self) -> FitResult:
        """Train until trainer.duration_samples, or a signal; returns where things were written."""
        threads = torch.get_num_threads()
        if self.config.trainer.cpu_threads:
            torch.set_num_threads(self.config.trainer.cpu_threads)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)

    def _fit(self) -> FitResult:
        from tqdm.auto import tqdm

        acc, t, s = self.accelerator, self.config.trainer, self.state
        # the first batch before anything is written: a data set with no usable file stops here, by name
        batches = self.batches()
        first_batch = next(batches) if s.samples_seen < t.duration_samples else None
        csv = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_json(self.out_dir / "config.json", self.config.to_dict())
            split_record = getattr(self.dataset, "split_record", None)
            if split_record is not None:  # a split-less folder: which files were held out, and by what rule
                ckpt.write_json(self.out_dir / "data_split.json", split_record)
                acc.print(f"{split_record['source']} has no 'split' column: {split_record['train']} files train, "
                          f"{split_record['val']} held out as 'val' by file-name hash (listed in "
                          f"{self.out_dir / 'data_split.json'})")
            csv = CSVLog(self.out_dir / "losses.csv", s.samples_seen if self.resumed_from else None)
        if t.tracker != "none":
            if t.tracker == "wandb":  # offline into the run folder unless the user chose a mode
                os.environ.setdefault("WANDB_MODE", "offline")
            acc.init_trackers("multidiff", config=flat_hparams(self.config.to_dict()),
                              init_kwargs={"wandb": {"dir": str(self.out_dir)}} if t.tracker == "wandb" else {})
        acc.print(f"multidiff train: {self.config.model.name} ({self.num_parameters:,} parameters) on "
                  f"{self.config.data.name}, {self.world} process(es) on {acc.device}, precision "
                  f"{t.mixed_precision}, global batch {t.batch_size} (micro-batch {self.micro_batch} x "
                  f"{t.grad_accum} accumulation x {self.world} processes), out_dir {self.out_dir}")
        if self.warm_start is not None and self.resumed_from is None:
            acc.print(self.warm_start.summary())
            if self.is_main:
                ckpt.write_json(self.out_dir / "warm_start.json", vars(self.warm_start))
        if self.resumed_from is not None:
            acc.print(f"resuming from {self.resumed_from} at {s.samples_seen} samples seen (step {s.step})")
            for line in self.resume_changes:
                acc.print(f"  {line}")
        if self.is_main:  # an earlier run's checkpoints ahead of this start would pass for this run's
            moved = ckpt.set_aside(self.ckpt_root, s.samples_seen, keep=self.resumed_from)
            if moved is not None:
                acc.print(f"moved {len(moved[1])} checkpoint(s) of an earlier run at or beyond {s.samples_seen} "
                          f"samples seen ({', '.join(moved[1])}) to {moved[0]}: this run starts at {s.samples_seen}")
        acc.wait_for_everyone()

        bar = tqdm(total=t.duration_samples, initial=min(s.samples_seen, t.duration_samples), unit="sample",
                   unit_scale=True, dynamic_ncols=True, disable=not (t.progress and self.is_main), desc="train")
        previews: list = []
        last_loss = float("nan")
        saved: Path | None = self.resumed_from
        status = "finished"
        self._rate_from = (time.perf_counter(), s.samples_seen)
        self.model.train()
        with self._signals(), contextlib.ExitStack() as cleanup:
            cleanup.callback(bar.close)
            if t.tracker != "none":
                cleanup.callback(acc.end_training)
            while s.samples_seen < t.duration_samples:
                step_t0 = time.perf_counter()
                before = s.samples_seen
                batch, first_batch = (first_batch if first_batch is not None else next(batches)), None
                if hasattr(self.loss_fn, "set_progress"):  # a loss that changes over the run (ECT's stages)
                    self.loss_fn.set_progress(s.samples_seen / t.duration_samples)
                loss = self.forward_backward(batch)
                self.apply_update(loss)
                s.elapsed_s += time.perf_counter() - step_t0
                if math.isfinite(loss):
                    last_loss = loss
                bar.update(min(s.samples_seen, t.duration_samples) - min(before, t.duration_samples))
                if crossed(before, s.samples_seen, t.log_every_samples):
                    logged = self._log(csv)
                    if logged is not None:
                        bar.set_postfix(loss=f"{logged:.4g}", refresh=False)
                stop = self._should_stop()
                done = s.samples_seen >= t.duration_samples
                if done and s.log_loss_count:  # the last, partial log interval
                    self._log(csv)
                if stop or done or crossed(before, s.samples_seen, t.checkpoint_every_samples):
                    saved = self.save()
                    if self.is_main:
                        self._side_effect("the loss curve", write_loss_curve, self.out_dir / "losses.csv",
                                          self.out_dir / "losses.png")
                if t.preview_every_samples > 0 and (done or crossed(before, s.samples_seen, t.preview_every_samples)):
                    written = self._safe_preview()
                    previews += written
                    if written and t.tracker != "none":
                        self._side_effect("logging previews to the tracker", log_media, acc, written, s.samples_seen)
                if stop and not done:
                    status = "interrupted"
                    acc.print(f"\nstopped by signal {signal.Signals(self._stop_signal).name} at {s.samples_seen} "
                              f"samples seen; checkpoint {saved}")
                    break
            acc.wait_for_everyone()
        return FitResult(status, self.out_dir, saved, s.samples_seen, s.step, s.nonfinite_total, last_loss,
                         self.out_dir / "losses.csv", previews)


#: settings a run cannot change on resume: they decide the weights' and the optimizer state's layout, or
#: what the data stream's position refers to
RESUME_FIXED = ("model.name", "model.params", "model.text_encoder", "data.name", "data.path", "objective.kind",
                "objective.prediction", "objective.schedule.name", "optimizer.name")
#: settings that never change a run's numbers, left out of the printed differences
_RESUME_SILENT = ("trainer.resume", "trainer.progress", "trainer.out_dir", "model.params.attention_backend")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _differences(saved: dict, current: dict, keys) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in keys) and a.get(key) != b.get(key):
            if key.endswith("attention_backend"):
                continue
            lines.append(f"{key} {a.get(key)!r} (now {b.get(key)!r})")
    return lines


def resume_conflicts(saved: dict, current: dict, built_config=None) -> list[str]:
    """The settings (RESUME_FIXED) in which a checkpoint's config and the current one differ, as
    "key old (now new)"; a data path counts as the same when both name the same file, and a
    model.params value left None (the preset's) as the value the built model has (``built_config``,
    the model's resolved constructor arguments), so 0.0 and None agree where the preset says 0.0."""
    if built_config:
        saved, current = (_resolve_model_params(c, built_config) for c in (saved, current))
    lines = _differences(saved, current, RESUME_FIXED)
    old_path, new_path = (c.get("data", {}).get("path") for c in (saved, current))
    if old_path and new_path and old_path != new_path:
        try:
            if Path(old_path).expanduser().resolve() == Path(new_path).expanduser().resolve():
                lines = [ln for ln in lines if not ln.startswith("data.path ")]
        except OSError:
            pass
    return lines


def _resolve_model_params(config: dict, built) -> dict:
    """config with each None in model.params replaced by the built model's value (JSON form)."""
    params = dict((config.get("model") or {}).get("params") or {})
    for key, value in params.items():
        if value is None and key in built:
            params[key] = json.loads(json.dumps(built[key], default=list))
    return {**config, "model": {**config.get("model", {}), "params": params}}


def changed_settings(saved: dict, current: dict) -> list[str]:
    """Every other setting that differs from the resumed checkpoint's, as printed lines."""
    sections = [k for k in current if k not in ("model", "data")] + ["model", "data"]
    lines = _differences(saved, current, sections)
    return [f"changed since the checkpoint: {ln}" for ln in lines
            if not any(ln.startswith(k + " ") or ln.startswith(k + ".") for k in _RESUME_SILENT + RESUME_FIXED)]


def parse_device(name: str | None) -> torch.device:
    """A torch device from a command-line name (None: cuda when available, else cpu); InputError for
    a name torch does not know or a device this machine lacks."""
    from ..errors import InputError

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"--device: unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device: {name!r} was asked for but torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device: {name!r} is not supported (use cpu, cuda or cuda:N)")
    return device


def read_checkpoint(path: str | Path):
    """(folder, config, state, spec) of a checkpoint; CheckpointError naming the file when one is unreadable."""
    folder = ckpt.resolve(path)
    try:
        config = config_from_json(ckpt.read_json(folder / "config.json"))
    except ConfigError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
    state = ckpt.read_json(folder / "state.json")
    try:
        spec = DataSpec.from_json(state["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'state.json'}: not a checkpoint state ({type(err).__name__}: {err})") from None
    return folder, config, state, spec


def load_for_sampling(path: str | Path, device=None, use_ema: bool = True):
    """(model, config, spec, state, folder, weights file) of a checkpoint; the model in eval mode on ``device``.

    Uses ema.safetensors when present and ``use_ema``, else model.safetensors.
    """
    from .build import build_model

    device = parse_device(device) if not isinstance(device, torch.device) else device
    folder, config, state, spec = read_checkpoint(path)
    model = build_model(config, spec)
    weights = folder / "ema.safetensors"
    if not (use_ema and ckpt.has_weights(weights)):
        weights = folder / "model.safetensors"
    model.to(device)
    ckpt.load_module(model, weights)
    model.eval().requires_grad_(False)
    return model, config, spec, state, folder, weights
