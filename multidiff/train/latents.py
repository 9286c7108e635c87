"""Latent diffusion plumbing (Rombach et al. 2022): cache an autoencoder's latents to disk, train any
backbone on them, decode what it generates.

``multidiff encode AE_CHECKPOINT --out DIR`` runs the autoencoder's own training data (its recipe's
``data`` section, every split, no random crops) through the encoder in order and writes

    DIR/latents-00000.safetensors ...   "latents" (N, *latent_shape) float32 posterior means,
                                        "labels" (N,), "index" (N,) (row in the source data)
    DIR/latents.json                    shapes, splits, captions, the scale factor, the source
                                        data set, the autoencoder checkpoint, reconstruction scores

The scale factor is 1 / std of the training latents (LDM Sec. 4.3.2 / App. G), so the data the
diffusion model sees have unit variance (``objective.schedule.sigma_data: 1``). The ``latents`` data
set reads the shards (``data.name: latents``, ``data.path: DIR``); its spec's modality is
``latent``, whose preview and evaluation hooks decode through the autoencoder and hand the
result to the source modality's hooks (WAVs / MP4s and their metrics).
"""
from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .modality import Modality, get_modality, register_modality
from .registry import DataSpec, register_dataset

MODALITY = "latent"


# ----------------------------------------------------------------------------- encoding
@torch.no_grad()
def encode_dataset(checkpoint, out, *, batch_size: int = 32, shard_size: int = 4096, device=None,
                   progress: bool = True, data_overrides: list[str] | None = None) -> Path:
    """Encode the autoencoder's training data (all splits) into latent shards; returns latents.json.

    ``data_overrides`` (``data.key=value``) change that data first, e.g. ``data.params.length=262144``
    to encode 16 s clips with an autoencoder trained on 1 s crops (it is fully convolutional), or
    ``data.path=...`` for another manifest of the same modality."""
    from dataclasses import replace

    from .build import build_dataset
    from .config import ConfigError, apply_overrides
    from .trainer import load_for_sampling

    model, config, spec, _, folder, weights = load_for_sampling(checkpoint, device)
    if config.objective.kind != "autoencoder":
        raise ValueError(f"{folder} holds a {config.objective.kind} model; multidiff encode needs an autoencoder "
                         f"checkpoint (objective.kind: autoencoder)")
    section = {"name": config.data.name, "path": config.data.path, "params": dict(config.data.params)}
    for text in data_overrides or []:
        if not text.startswith("data."):
            raise ConfigError(text.split("=", 1)[0], "multidiff encode only overrides data.* keys")
    apply_overrides({"data": section}, list(data_overrides or []))
    params = section["params"]
    for key, value in get_modality(spec.modality).deterministic_data.items():  # every item once, as it is
        if key in params:
            params[key] = value
    config = replace(config, data=replace(config.data, name=section["name"], path=section["path"], params=params))
    data = build_dataset(config)
    spec = getattr(data, "spec", spec)  # the encoded data's (data.* overrides may change the length)
    rows = getattr(data, "rows", None)  # per item: split and caption (the modality contract)
    n = len(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    shards, latents_all, labels_all = [], [], []
    iterator = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"encoding {n} items", unit="batch", disable=not sys.stderr.isatty())
    buffer, buffer_labels, buffer_index = [], [], []
    for start in iterator:
        items = [data[k] for k in range(start, min(n, start + batch_size))]
        x = torch.stack([it["x"] for it in items]).to(device)
        z = model.encode(x).latent_dist.mean.float().cpu()
        buffer.append(z)
        buffer_labels += [int(it.get("label", -1)) for it in items]
        buffer_index += list(range(start, start + len(items)))
        if sum(len(b) for b in buffer) >= shard_size or start + batch_size >= n:
            shards.append(_write_shard(out, len(shards), torch.cat(buffer), buffer_labels, buffer_index))
            latents_all.append(torch.cat(buffer))
            labels_all += buffer_labels
            buffer, buffer_labels, buffer_index = [], [], []
    latents = torch.cat(latents_all)
    scores = reconstruction_scores(model, data, [k for k in range(n) if _split_of(rows, k) not in ("", "train")][:64],
                                   spec.modality)
    splits = [str(r.get("split", "") or "") for r in rows] if rows is not None and len(rows) == n else [""] * n
    texts = [str(r.get("text", "") or "") for r in rows] if rows is not None and len(rows) == n else [""] * n
    train = torch.tensor([s in ("", "train") for s in splits])
    std = float(latents[train].std()) if train.any() else float(latents.std())
    meta = {"autoencoder": str(Path(folder).resolve()), "weights": weights.name,
            "source_modality": spec.modality, "source_shape": list(spec.sample_shape),
            "source_meta": spec.meta, "source_data": {"name": config.data.name, "path": config.data.path,
                                                      "params": params},
            "latent_shape": list(latents.shape[1:]), "count": n, "scale": 1.0 / max(std, 1e-8),
            "latent_std": std, "latent_mean": float(latents[train].mean()) if train.any() else float(latents.mean()),
            "compression": math.prod(spec.sample_shape) / math.prod(latents.shape[1:]),
            "num_classes": spec.num_classes, "reconstruction": scores, "shards": shards, "splits": splits,
            "texts": texts}
    path = out / "latents.json"
    path.write_text(json.dumps(meta, indent=1))
    return path


def _split_of(rows, k: int) -> str:
    return str(rows[k].get("split", "") or "") if rows is not None and k < len(rows) else ""


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Posterior-mean reconstructions of a batch of signals, float32, decoded ``batch_size`` at a time."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(model.encode(x[k:k + batch_size].to(device)).latent_dist.mean).sample
                      for k in range(0, len(x), batch_size)]).float()


@torch.no_grad()
def reconstruction_scores(model, data, indices: list[int], modality: str) -> dict:
    """Posterior-mean reconstructions of held-out items, scored by :func:`score_reconstructions`."""
    if not indices:
        return {"n": 0}
    x = torch.stack([data[k]["x"] for k in indices])
    return score_reconstructions(reconstruct(model, x), x, modality)


def score_reconstructions(recon: torch.Tensor, x: torch.Tensor, modality: str) -> dict:
    """MSE and PSNR (signals in [-1, 1]) of reconstructions ``recon`` of signals ``x``, and the
    modality's own reconstruction metrics (audio: multi-resolution STFT and SI-SDR; video: SSIM)."""
    x = x.to(recon.device).float()
    mse = (recon - x).flatten(1).square().mean(1)
    out = {"n": len(x), "mse": float(mse.mean()),
           "psnr_db": float((10 * torch.log10(4.0 / mse.clamp(min=1e-12))).mean())}
    hook = get_modality(modality).reconstruction_metrics
    if hook is not None:
        out.update(hook(recon, x))
    return out


def encode_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="an autoencoder checkpoint (trained with objective.kind: autoencoder)")
    parser.add_argument("--out", required=True, help="output folder for the latent shards and latents.json")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=4096, help="latents per safetensors shard")
    parser.add_argument("--device", default=None)
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="change the autoencoder's data before encoding (e.g. data.params.length=262144)")


def encode_run(args) -> int:
    try:
        path = encode_dataset(args.checkpoint, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                              device=args.device, data_overrides=args.overrides)
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"multidiff encode: error: {e}", file=sys.stderr)
        return 2
    meta = json.loads(path.read_text())
    print(f"encoded {meta['count']} items to {len(meta['shards'])} shard(s): latents {tuple(meta['latent_shape'])}, "
          f"compression {meta['compression']:.1f}x, scale factor {meta['scale']:.4f} (1 / std of the train latents)")
    print(f"held-out reconstruction: {json.dumps(meta['reconstruction'])}")
    print(f"wrote {path}")
    return 0


def _write_shard(out: Path, k: int, latents, labels, index) -> str:
    from safetensors.torch import save_file

    name = f"latents-{k:05d}.safetensors"
    save_file({"latents": latents.contiguous(), "labels": torch.tensor(labels, dtype=torch.long),
               "index": torch.tensor(index, dtype=torch.long)}, str(out / name))
    return name


# ------------------------------------------------------------------------------ data set
@dataclass
class LatentParams:
    """The cached latents of ``multidiff encode`` (data.path: its output folder). split: the rows
    of the source data's split (None: all); scale: false trains on the raw latents."""

    split: str | None = "train"
    scale: bool = True
    num_classes: int | None = None


class LatentDataset(torch.utils.data.Dataset):
    """Items {"x": latent (*latent_shape) x scale, "label", "text"} from a ``multidiff encode`` folder."""

    def __init__(self, params: LatentParams, path: str | None, seed: int):
        from safetensors.torch import load_file

        if path is None:
            raise ValueError("data.path: the latents data set needs a `multidiff encode` output folder")
        folder = Path(path)
        index = folder / "latents.json"
        if not index.is_file():
            raise FileNotFoundError(f"{folder} has no latents.json (write one with `multidiff encode AE_CHECKPOINT "
                                    f"--out {folder}`)")
        meta = json.loads(index.read_text())
        tensors = [load_file(str(folder / s)) for s in meta["shards"]]
        latents = torch.cat([t["latents"] for t in tensors])
        labels = torch.cat([t["labels"] for t in tensors])
        keep = [k for k, s in enumerate(meta["splits"]) if params.split is None or s == params.split]
        if not keep:
            raise ValueError(f"{folder}: no latents in split {params.split!r} (splits: {sorted(set(meta['splits']))})")
        self.scale = float(meta["scale"]) if params.scale else 1.0
        self.latents, self.labels = latents[keep] * self.scale, labels[keep]
        self.texts = [meta["texts"][k] for k in keep]
        classes = params.num_classes if params.num_classes is not None else int(meta.get("num_classes", 0))
        spec_meta = {"autoencoder": meta["autoencoder"], "scale": self.scale, "source_modality": meta["source_modality"],
                     "source_shape": meta["source_shape"],
                     "source_meta": meta["source_meta"], "source_data": meta["source_data"],
                     **{k: v for k, v in meta["source_meta"].items() if k in ("sample_rate", "fps", "class_names")}}
        self.spec = DataSpec(tuple(meta["latent_shape"]), classes, MODALITY, spec_meta)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        out = {"x": self.latents[index], "text": self.texts[index]}
        if self.spec.num_classes > 0:
            label = int(self.labels[index])
            out["label"] = label if label >= 0 else self.spec.num_classes
        return out


register_dataset("latents", LatentDataset, params=LatentParams, needs_path=True,
                 description="latents cached by `multidiff encode` (latent diffusion)")


# ---------------------------------------------------------------------- decoding hooks
@functools.lru_cache(maxsize=2)
def load_autoencoder(path: str, device: str = "cpu"):
    from .trainer import load_for_sampling

    model, *_ = load_for_sampling(path, device)
    if hasattr(model, "discriminator"):  # only training needs it: decoding and pipelines do not
        del model.discriminator
    return model


@torch.no_grad()
def decode_latents(latents: torch.Tensor, spec: DataSpec, batch_size: int = 32) -> torch.Tensor:
    """Generated latents (batch, *latent_shape), in the scaled space the diffusion model saw, -> signals."""
    return decode_scaled(load_autoencoder(spec.meta["autoencoder"]), latents, float(spec.meta.get("scale", 1.0)),
                         batch_size).float().cpu()


@torch.no_grad()
def decode_scaled(autoencoder, latents: torch.Tensor, scale: float, batch_size: int = 32) -> torch.Tensor:
    """Latents in the diffusion model's scaled space -> signals: divided by ``scale`` (``multidiff
    encode``'s 1 / std), decoded ``batch_size`` at a time on the autoencoder's device and dtype."""
    param = next(autoencoder.parameters())
    out = [autoencoder.decode((latents[k:k + batch_size] / scale).to(param.device, param.dtype)).sample
           for k in range(0, len(latents), batch_size)]
    return torch.cat(out) if out else latents.new_zeros(0)


def source_spec(spec: DataSpec) -> DataSpec:
    """The spec of the decoded signals (the autoencoder's data)."""
    meta = spec.meta
    return DataSpec(tuple(meta["source_shape"]), spec.num_classes, meta["source_modality"], dict(meta["source_meta"]))


def latent_preview(samples, out_dir, name, *, labels=None, spec=None, **kw):
    """Decode, then the source modality's preview (WAVs + spectrograms, MP4s ...)."""
    fn = get_modality(spec.meta["source_modality"]).preview
    decoded = decode_latents(samples, spec)
    return [] if fn is None else fn(decoded, out_dir, name, labels=labels, spec=source_spec(spec), **kw)


def latent_evaluate(samples, config, *, labels=None, spec=None):
    """Decode, then the source modality's metrics with the source data set (its classifier, splits)."""
    from dataclasses import replace

    fn = get_modality(spec.meta["source_modality"]).evaluate
    if fn is None:
        return {"n": len(samples)}
    src = spec.meta["source_data"]
    source_config = replace(config, data=replace(config.data, name=src["name"], path=src["path"],
                                                 params=dict(src["params"])))
    return fn(decode_latents(samples, spec), source_config, labels=labels, spec=source_spec(spec))


register_modality(Modality(MODALITY, preview=latent_preview, evaluate=latent_evaluate,
                           description="latents of an autoencoder: decoded, then the source modality's hooks"))
