"""What the three pipelines share: the schedule component, folder handling and the sampling call.

A pipeline folder (``save_pretrained`` / ``multidiff export``; loaded from local folders only)::

    model_index.json        {"_class_name": ["multidiff_pipeline", "AudioDiffusionPipeline"],
                             "unet": ["multidiff.audio.unet1d", "UNet1D"],
                             "scheduler": ["multidiff.pipelines.base", "MultidiffSchedulerConfig"],
                             "text_encoder": [null, null], ...}
    multidiff_pipeline.py   one import line naming the pipeline class (see below)
    README.md               the model card (Hub front matter; recipe, data and measured results on export)
    unet/                   (or transformer/) config.json + diffusion_pytorch_model.safetensors
    scheduler/              scheduler_config.json: schedule, prediction type, sampling defaults, shape

JSON and safetensors only. Our own ``from_pretrained`` reads the class from model_index.json
and runs no code from the folder. diffusers resolves a ``_class_name`` that is not one of its
own only through a file in the folder, which it executes only when asked:
``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` runs
``multidiff_pipeline.py`` (it imports the class from the installed multidiff) and then loads
every component from the module named in model_index.json (already imported by then).

Text conditioning (optional ``text_encoder`` component, None until one is added): the interface
of multidiff.nn's caption encoders, ``text_encoder(captions: list[str]) -> (context (batch,
tokens, dim), mask (batch, tokens) bool)``, given to the backbone as cond["context"] /
cond["context_mask"] (its cross-attention). The empty caption "" is the unconditional branch of
classifier-free guidance unless ``negative_prompt`` is given, and the caption when no prompt is.
To be saved in the folder the encoder must be a diffusers ``ModelMixin`` or a transformers model.

Latent diffusion (optional ``vae`` component): the backbone generates latents of the stored
sample_shape and the autoencoder decodes them (after dividing by the scale factor kept in the
scheduler config's meta), so the output is audio / video as for a direct model.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core import (
    PREDICTIONS,
    SAMPLERS,
    SPACINGS,
    ClassifierFreeGuidance,
    Denoiser,
    ScheduleConfig,
    randn_like,
    sample,
    sample_with_diffusers_scheduler,
    sigma_grid,
)
from ..nn.text import TextConditioned
from ..train.sampling import Conditioning

#: stem of the file in a pipeline folder that names the pipeline class for diffusers
SHIM = "multidiff_pipeline"
#: pipeline class name -> class, and modality -> class (filled by subclasses as they are defined)
PIPELINES: dict[str, type] = {}
MODALITIES: dict[str, type] = {}


class MultidiffSchedulerConfig(SchedulerMixin, ConfigMixin):
    """A pipeline's noise schedule, parameterisation and sampling defaults (JSON; no state).

    Not a stepping scheduler: generation runs one of our samplers over ``sigmas()`` with the
    denoiser of ``denoiser(backbone)``, or a diffusers scheduler handed to the pipeline call.
    schedule: the fields of multidiff.core.ScheduleConfig (name, sigma_min, sigma_max, sigma_data, ...);
    prediction: one of multidiff.core.PREDICTIONS; sample_shape: one sample's shape without the
    batch; num_classes: 0 for unconditional models (the null label is num_classes);
    class_names: a name per label (or None); sampler / num_inference_steps / spacing / rho /
    sigma_min / sigma_max (None: the schedule's) / guidance_scale: the call's defaults (those of
    the recipe's ``sampling`` section when exported); sample_rate (audio, Hz), fps (video);
    meta: other facts about the data (e.g. the shapes' normalisation).
    """

    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, schedule: dict | None = None, prediction: str = "edm", sample_shape: Sequence[int] = (1, 16384),
                 num_classes: int = 0, class_names: Sequence[str | None] | None = None, sampler: str = "dpmpp_2m",
                 num_inference_steps: int = 32, spacing: str = "karras", rho: float = 7.0,
                 sigma_min: float | None = None, sigma_max: float | None = None, guidance_scale: float = 1.0,
                 sample_rate: int | None = None, fps: float | None = None, meta: dict | None = None,
                 stepping_scheduler: dict | None = None):
        known = {f.name for f in fields(ScheduleConfig)}
        unknown = sorted(set(schedule or {}) - known)
        if unknown:
            raise ValueError(f"schedule: unknown fields {unknown}; known: {sorted(known)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; known: {PREDICTIONS}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; known: {SPACINGS}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.schedule_config = ScheduleConfig(**(schedule or {}))
        self.noise_schedule = self.schedule_config.build()
        self.stepping = None if stepping_scheduler is None else _diffusers_scheduler(stepping_scheduler)

    @property
    def config(self):
        """The stored config plus the keys diffusers' schedulers read, worked out from the schedule
        (beta schedule of a discrete VP schedule; sigma range, sigma_data and Karras spacing
        otherwise), so ``pipe.scheduler = X.from_config(pipe.scheduler.config)`` gives X this model's
        noise levels where X reads those keys (Euler, UniPC, the EDM schedulers; others keep their
        beta schedule's range), as for a diffusers pipeline."""
        from diffusers.configuration_utils import FrozenDict

        view = {**self._diffusers_keys(), **self._internal_dict}
        for key in ("sigma_min", "sigma_max"):  # None (the schedule's) as the value it stands for
            if view.get(key) is None:
                view[key] = float(getattr(self.noise_schedule, key))
        # diffusers' from_config gives keys listed here the new class's defaults: these are meant
        view["_use_default_values"] = [k for k in view.get("_use_default_values", [])
                                       if k not in ("sigma_min", "sigma_max")]
        return FrozenDict(view)

    def _diffusers_keys(self) -> dict:
        sched, internal = self.noise_schedule, self._internal_dict
        keys = {"prediction_type": "v_prediction" if internal["prediction"] == "v" else "epsilon"}
        if getattr(sched, "discrete", False):  # VPDiscrete: its own betas
            sc = self.schedule_config
            keys.update(num_train_timesteps=sc.num_train_timesteps, beta_schedule=sc.beta_schedule,
                        beta_start=sc.beta_start, beta_end=sc.beta_end,
                        rescale_betas_zero_snr=sc.rescale_zero_terminal_snr)
        else:
            keys.update(use_karras_sigmas=True, sigma_data=self.schedule_config.sigma_data)
        return keys

    def set_stepping_scheduler(self, scheduler) -> None:
        """Step generation with a diffusers scheduler (None: our ``sampler`` again); it is stored by
        class name and config, so a saved pipeline loads with it."""
        self.stepping = scheduler
        record = None if scheduler is None else {"class_name": type(scheduler).__name__,
                                                 "config": {k: v for k, v in scheduler.config.items()
                                                            if not k.startswith("_")}}
        self.register_to_config(stepping_scheduler=record)

    @classmethod
    def from_training(cls, config, spec) -> MultidiffSchedulerConfig:
        """The component for a training Config (objective + sampling sections) and its DataSpec."""
        s, meta = config.sampling, dict(spec.meta)
        names = meta.pop("class_names", None) or {}
        return cls(schedule=asdict(config.objective.schedule), prediction=config.objective.prediction,
                   sample_shape=list(spec.sample_shape), num_classes=spec.num_classes,
                   class_names=[names.get(str(k)) for k in range(spec.num_classes)] if names else None,
                   sampler=s.sampler, num_inference_steps=s.steps, spacing=s.spacing, rho=s.rho, sigma_min=s.sigma_min,
                   sigma_max=s.sigma_max, guidance_scale=s.guidance, sample_rate=meta.pop("sample_rate", None),
                   fps=meta.pop("fps", None), meta=meta)

    def denoiser(self, model: torch.nn.Module) -> Denoiser:
        """The sigma-space denoiser D(x, sigma, cond) -> x0 of a backbone under this parameterisation."""
        return Denoiser(model, self.noise_schedule, self.config.prediction, sigma_data=self.schedule_config.sigma_data)

    def sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """The float64 grid of num_inference_steps + 1 descending sigmas ending in 0 (as ``multidiff sample``)."""
        c, sched = self.config, self.noise_schedule
        lo = c.sigma_min if c.sigma_min is not None else sched.sigma_min
        hi = c.sigma_max if c.sigma_max is not None else sched.sigma_max
        return sigma_grid(num_inference_steps or c.num_inference_steps, lo, hi, c.spacing, rho=c.rho, schedule=sched)


def _diffusers_scheduler(record: dict):
    """A diffusers scheduler from {"class_name", "config"} (a pipeline folder's stepping_scheduler)."""
    import diffusers

    cls = getattr(diffusers, str(record.get("class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"stepping_scheduler: {record.get('class_name')!r} is not a diffusers scheduler class")
    return cls.from_config(record.get("config") or {})


def pipeline_folder(path) -> tuple[Path, dict]:
    """(folder, model_index.json) of a local pipeline folder; FileNotFoundError saying what is wrong."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no pipeline folder at {str(path)!r} (multidiff pipelines load from local folders "
                                f"only; write one with save_pretrained or `multidiff export CHECKPOINT FOLDER`)")
    index = folder / "model_index.json"
    if not index.is_file():
        hint = (": it looks like a training checkpoint; turn it into a pipeline with `multidiff export`"
                if (folder / "state.json").is_file() or (folder / "checkpoints").is_dir() else "")
        raise FileNotFoundError(f"{folder} is not a pipeline folder (no model_index.json){hint}")
    return folder, json.loads(index.read_text())


def _class_name(index: dict) -> str:
    name = index.get("_class_name")
    return name[1] if isinstance(name, list) and len(name) == 2 and name[0] == SHIM else name


def _batch_size(num_samples: int | None, **sized) -> int:
    """The batch size implied by num_samples and the per-sample sequences given; they must agree."""
    sizes = {k: len(v) for k, v in sized.items() if v is not None and not isinstance(v, (str, int, torch.Generator))
             and not (torch.is_tensor(v) and v.ndim == 0)}
    if num_samples is not None:
        sizes["num_samples"] = int(num_samples)
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes disagree: {sizes}")
    n = next(iter(sizes.values()), 1)
    if n < 1:
        raise ValueError(f"need at least one sample, got {sizes}")
    return n


class MultidiffPipeline(DiffusionPipeline):
    """Base of the modality pipelines: a backbone (``ModelMixin``, component ``backbone_name``), a
    :class:`MultidiffSchedulerConfig` (component ``scheduler``) and an optional ``text_encoder``.

    Subclasses set ``modality``, ``backbone_name``, ``backbone_class``, ``shape_arguments`` (the
    keyword arguments of ``sample_shape``), and define ``__init__`` (diffusers reads the
    components from its signature), ``sample_shape`` and ``_output``.
    """

    modality: str = ""
    backbone_name: str = "unet"
    backbone_class: type = torch.nn.Module
    shape_arguments: tuple[str, ...] = ()
    _optional_components = ["text_encoder", "vae"]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PIPELINES[cls.__name__] = cls
        if cls.modality:
            MODALITIES[cls.modality] = cls

    def _register(self, backbone, scheduler, text_encoder, vae=None) -> None:
        if not isinstance(backbone, self.backbone_class):
            raise TypeError(f"{type(self).__name__}: {self.backbone_name} must be a {self.backbone_class.__name__}, "
                            f"got {type(backbone).__name__}")
        if not isinstance(scheduler, MultidiffSchedulerConfig):
            raise TypeError(f"{type(self).__name__}: scheduler must be a MultidiffSchedulerConfig (the schedule and "
                            f"parameterisation), got {type(scheduler).__name__}; a diffusers scheduler goes to the "
                            f"call instead: pipe(..., scheduler=EulerDiscreteScheduler(...))")
        if vae is not None and not (hasattr(vae, "encode") and hasattr(vae, "decode")):
            raise TypeError(f"{type(self).__name__}: vae must be an autoencoder with encode / decode (diffusers' "
                            f"AutoencoderOobleck, multidiff.video.autoencoder.FrameVAE), got {type(vae).__name__}")
        self.register_modules(**{self.backbone_name: backbone}, scheduler=scheduler, text_encoder=text_encoder, vae=vae)
        self.sample_shape()  # the stored shape must suit the backbone

    def __setattr__(self, name, value):
        # pipe.scheduler = X.from_config(pipe.scheduler.config): X steps the pipeline; the schedule and
        # parameterisation (what the model was trained with) stay in our config, which keeps X
        if (name == "scheduler" and isinstance(value, SchedulerMixin)
                and not isinstance(value, MultidiffSchedulerConfig) and "scheduler" in self.__dict__):
            self.scheduler.set_stepping_scheduler(value)
            return
        super().__setattr__(name, value)

    @property
    def backbone(self) -> torch.nn.Module:
        return getattr(self, self.backbone_name)

    # ------------------------------------------------------------------ attention
    def _attention_modules(self) -> list:
        from ..nn import Attention

        return [m for m in self.backbone.modules() if isinstance(m, Attention)]

    def enable_xformers_memory_efficient_attention(self, attention_op=None) -> None:
        """Run every attention layer of the backbone through xformers (needs the xformers package and
        a CUDA device; raises otherwise, never a silent no-op). ``attention_op`` is not supported."""
        from ..nn import xformers_available

        if attention_op is not None:
            raise ValueError("attention_op is not supported: multidiff picks xformers' memory-efficient kernel")
        if not xformers_available():
            raise ValueError("xformers attention needs the xformers package and a CUDA device (pip install "
                             "multidiff[xformers]); without it attention runs through torch SDPA, whose flash / "
                             "memory-efficient kernels already avoid the tokens x tokens matrix")
        for module in self._attention_modules():
            module.backend = "xformers"

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Back to torch SDPA (the default) in every attention layer."""
        for module in self._attention_modules():
            module.backend = "auto"

    def enable_attention_slicing(self, slice_size=None) -> None:
        raise NotImplementedError("attention slicing is not supported: multidiff attention runs through torch SDPA "
                                  "(flash / memory-efficient kernels, no tokens x tokens matrix), or xformers with "
                                  "enable_xformers_memory_efficient_attention()")

    def set_attn_processor(self, processor) -> None:
        raise NotImplementedError("multidiff backbones have no diffusers attention processors; choose the attention "
                                  "kernel with enable_xformers_memory_efficient_attention() / "
                                  "disable_xformers_memory_efficient_attention()")

    @property
    def device(self) -> torch.device:  # the backbone's (diffusers asks every component, text encoders too)
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    def sample_shape(self, **overrides) -> tuple[int, ...]:  # pragma: no cover - abstract
        """One sample's shape (no batch), the stored one with the ``shape_arguments`` given."""
        raise NotImplementedError

    def _output(self, samples, class_labels):  # pragma: no cover - abstract
        raise NotImplementedError

    def _stored_shape(self, rank: int, channel_axis: int) -> list[int]:
        """The scheduler config's sample_shape, checked against the backbone's rank and input channels."""
        shape, want = list(self.scheduler.config.sample_shape), self.backbone.config.in_channels
        if len(shape) != rank or shape[channel_axis] != want:
            raise ValueError(f"sample_shape {tuple(shape)} does not suit the {type(self.backbone).__name__}: it takes "
                             f"{rank}-D samples with {want} channels at axis {channel_axis}")
        return shape

    # ----------------------------------------------------------------------- folders
    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: str | None = None,
                        push_to_hub: bool = False, model_card: str | None = None, **kwargs) -> None:
        """Write the pipeline folder (JSON + safetensors; see the module docstring) with a README.md model
        card (``model_card``, else one made from the pipeline; an existing card is kept). ``push_to_hub``
        then uploads the folder (``repo_id``, ``token``, ``private``, ``commit_message``), which needs a
        Hugging Face token and network access; without them it stops with one line, the folder saved."""
        hub_options = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message") if k in kwargs}
        if not safe_serialization:
            raise ValueError("multidiff pipelines store weights as safetensors only (safe_serialization=False)")
        super().save_pretrained(save_directory, safe_serialization=True, variant=variant, **kwargs)
        folder, cls = Path(save_directory), type(self)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = [SHIM, cls.__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (folder / f"{SHIM}.py").write_text(
            f'"""Names the pipeline class for diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)."""\n'
            f"from {cls.__module__} import {cls.__name__}  # noqa: F401\n")
        from .card import default_card, push_folder

        card = folder / "README.md"
        if model_card is not None or not card.is_file():
            card.write_text(model_card if model_card is not None else default_card(self))
        if push_to_hub:
            push_folder(folder, **hub_options)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a pipeline folder (local only; no code from the folder is run). Called on
        MultidiffPipeline it returns whichever pipeline the folder holds; other keyword
        arguments go to diffusers (torch_dtype, components to replace, ...)."""
        folder, index = pipeline_folder(pretrained_model_name_or_path)
        name = _class_name(index)
        target = PIPELINES.get(name) if isinstance(name, str) else None
        if target is None or not issubclass(target, cls):
            raise ValueError(f"{folder} holds a {name!r} pipeline, not a {cls.__name__}")
        if kwargs.get("use_safetensors") is False:
            raise ValueError("multidiff pipelines load safetensors only (use_safetensors=False would unpickle .bin files)")
        kwargs["use_safetensors"] = True  # a .bin placed in the folder is never unpickled
        return super(MultidiffPipeline, target).from_pretrained(str(folder), **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        # our classes are named in model_index.json as [SHIM, name] for diffusers; read as plain names here
        # so that diffusers' loader uses the class it was called on instead of running the shim
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        config["_class_name"] = _class_name(config)
        return out

    # ----------------------------------------------------------------------- sampling
    def _labels(self, class_labels, n: int) -> torch.Tensor | None:
        """(n,) long labels from an int, a class name, or a sequence / tensor of them."""
        k, names = self.scheduler.config.num_classes, self.scheduler.config.class_names
        if class_labels is None:
            return None
        if k == 0:
            raise ValueError(f"{type(self).__name__}: the model is unconditional; class_labels are not accepted")
        if torch.is_tensor(class_labels):
            class_labels = class_labels.reshape(-1).tolist()
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels] * n
        ids = []
        for v in class_labels:
            if isinstance(v, str):
                if not names or v not in names:
                    raise ValueError(f"unknown class name {v!r}; known: {[x for x in names or [] if x]}")
                v = names.index(v)
            if not 0 <= int(v) < k:
                raise ValueError(f"class label {v} out of range for {k} classes")
            ids.append(int(v))
        return torch.tensor(ids, dtype=torch.long)

    def _conditioning(self, labels, prompt, negative_prompt, n: int) -> tuple[torch.nn.Module, Conditioning]:
        """(the model to denoise with, the samples' conditioning), built as ``multidiff sample`` builds
        them (multidiff.train.sampling.Conditioning): no labels is the null label, i.e. an
        unconditional sample of a conditional model; with a text encoder the backbone is wrapped in
        TextConditioned (as in training), no prompt is the empty caption, and under guidance the
        captions of both branches are encoded in one call, once per generation."""
        k = self.scheduler.config.num_classes
        if k and labels is None:
            labels = torch.full((n,), k, dtype=torch.long)
        encoder = getattr(self, "text_encoder", None)
        if encoder is None:
            if prompt is not None or negative_prompt is not None:
                raise ValueError(f"{type(self).__name__} has no text encoder, so prompt / negative_prompt cannot be "
                                 f"used; condition on class_labels, or add a text_encoder component")
            return self.backbone, Conditioning(labels=labels if k else None)

        def captions(p):
            out = [p] * n if isinstance(p, str) else list(p)
            if len(out) != n:
                raise ValueError(f"{len(out)} captions for {n} samples")
            return out

        negative = "" if negative_prompt is None else negative_prompt
        return TextConditioned(self.backbone, encoder), Conditioning(
            labels=labels if k else None, prompts=captions("" if prompt is None else prompt),
            negative_prompt=negative if isinstance(negative, str) else captions(negative))

    def _noise(self, n: int, shape: tuple[int, ...], generator) -> torch.Tensor:
        """Standard normal (n, *shape), drawn on the generators' device: with one generator per
        sample, sample k's noise does not depend on the rest of the batch."""
        first = generator[0] if isinstance(generator, (list, tuple)) else generator
        device = first.device if first is not None else self.device
        return randn_like(torch.empty(n, *shape, device=device), generator).to(self.device, self.dtype)

    @torch.no_grad()
    def __call__(self, class_labels=None, num_samples: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, sampler: str | None = None, scheduler=None, generator=None,
                 prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 output_type: str = "pt", return_dict: bool = True, **shape: Any):
        """Generate a batch; returns the modality's output (``return_dict``) or a 1-tuple of samples.

        class_labels: an int or class name for every sample, or one per sample (conditional
        models; None = the null label, i.e. unconditional). num_samples: the batch size (default:
        the length of class_labels / prompt / generator, else 1). num_inference_steps, sampler
        (a name in multidiff.core.SAMPLERS) and guidance_scale (classifier-free guidance; 1 =
        the conditional model exactly) default to the scheduler config's. scheduler: any
        diffusers scheduler instance to step instead of ``sampler``. generator: a
        torch.Generator for the whole batch, or a list with one per sample (sample k then
        equals ``multidiff sample --seed s`` sample k for the generators of
        ``multidiff.core.make_generators(s, n)``; stochastic samplers draw from them too, so on a GPU give
        generators on its device). prompt / negative_prompt: need a text_encoder.
        output_type: "pt" (float32 CPU tensors) or "np". ``**shape``: the subclass's
        ``shape_arguments`` (length, num_frames, num_points ...), see ``sample_shape``.
        """
        unknown = sorted(set(shape) - set(self.shape_arguments))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {unknown}; "
                            f"the sample shape takes {list(self.shape_arguments)}")
        if sampler is not None and scheduler is not None:
            raise ValueError("pass either sampler= (one of ours) or scheduler= (a diffusers scheduler), not both")
        if output_type not in ("pt", "np"):
            raise ValueError(f"output_type must be 'pt' or 'np', got {output_type!r}")
        c = self.scheduler.config
        if scheduler is None and sampler is None:  # one assigned to pipe.scheduler steps unless told otherwise
            scheduler = self.scheduler.stepping
        sampler = c.sampler if sampler is None else sampler
        steps = c.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        guidance = c.guidance_scale if guidance_scale is None else float(guidance_scale)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        n = _batch_size(num_samples, class_labels=class_labels, prompt=prompt, generator=generator)
        labels = self._labels(class_labels, n)
        if labels is None and prompt is None:  # nothing to guide towards: the stored default does not apply
            if guidance_scale is not None and guidance != 1.0:
                raise ValueError(f"guidance_scale={guidance} needs class_labels or a prompt to guide towards")
            guidance = 1.0
        model, conditioning = self._conditioning(labels, prompt, negative_prompt, n)
        cond = conditioning.batch(0, n, self.device, uses_concat=False)
        sample_shape = self.sample_shape(**shape)
        denoiser = self.scheduler.denoiser(model)
        if guidance != 1.0:
            denoiser = ClassifierFreeGuidance(denoiser, guidance,
                                              conditioning.unconditional(cond, self.scheduler.config.num_classes, 0, n))
        noise = self._noise(n, sample_shape, generator)
        modes = [(m, m.training) for m in model.modules()]  # the components' own modes, restored after
        model.eval()
        try:
            if scheduler is not None:
                x = sample_with_diffusers_scheduler(denoiser, noise, scheduler, steps, cond=cond, generator=generator)
            else:
                sigmas = self.scheduler.sigmas(steps)
                with self.progress_bar(total=steps) as bar:
                    x = sample(denoiser, noise * float(sigmas[0]), sigmas, sampler, cond=cond, generator=generator,
                               callback=lambda info: bar.update())
        finally:
            for m, training in modes:
                m.training = training
        x = self.decode_latents(x).float().cpu()
        samples = x.numpy() if output_type == "np" else x
        out = self._output(samples, None if labels is None else labels.tolist())
        return out if return_dict else (samples,)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Latent diffusion (Rombach et al. 2022): the ``vae`` decodes generated latents, divided by
        the scale factor the model was trained with (``multidiff encode``'s 1 / std), to the
        modality's signals; without a vae the samples are returned as they are."""
        from ..train.latents import decode_scaled

        vae = getattr(self, "vae", None)
        if vae is None:
            return latents
        return decode_scaled(vae, latents, float(self.scheduler.config.meta.get("scale", 1.0)), batch_size)


def output_paths(folder, prefix: str, n: int, ext: str) -> list[Path]:
    """<folder>/<prefix>-000.<ext>, ... (the folder is created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [folder / f"{prefix}-{k:03d}.{ext}" for k in range(n)]
