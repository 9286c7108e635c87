"""Audio's entries in the training registries: the ``audio_unet1d`` backbone, the ``audio`` data set
(folder or manifest), WAV + spectrogram previews and signal metrics. Imported by
``multidiff.train.registry.load_plugins``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.utils import item_generator
from ..nn.presets import build_preset, preset_params
from ..shards import packed_from
from ..train.modality import Modality, register_modality
from ..train.registry import DataSpec, register_dataset, register_model
from .autoencoder import AudioAutoencoderParams, OobleckParams, build_oobleck_entry, stft_discriminator, stft_term
from .data import AudioLoadParams
from .io import AUDIO_EXTENSIONS, probe_audio, save_wav, spectrogram_sheet
from .metrics import mel_conditioning
from .spectrogram import MODALITY as MEL_MODALITY
from .spectrogram import MelDataParams, MelTrainData, audio_spec, decode_samples
from .unet1d import UNET1D_PRESETS, UNet1D
from .vocoder import MelVocoderParams, build_mel_vocoder

MODALITY = "audio"


UNet1DParams = preset_params("UNet1DParams", UNet1D, UNET1D_PRESETS, default="small")


def build_unet1d(params, spec: DataSpec, *, gradient_checkpointing: bool = False):
    """A UNet1D for (channels, samples) audio; extra input channels default to the data's masked-training ones."""
    return build_preset(params, gradient_checkpointing=gradient_checkpointing, in_channels=spec.sample_shape[0],
                        num_classes=spec.num_classes,
                        defaults={"extra_in_channels": int(spec.meta.get("concat_channels", 0))})


register_model("audio_unet1d", build_unet1d, params=UNet1DParams, modality=MODALITY, example_shape=(1, 16384),
               example_batch=32, description="1D waveform U-Net (multidiff.audio.unet1d)")


@dataclass
class AudioDataParams(AudioLoadParams):
    """See multidiff.audio.data.AudioDataset (the loading fields) and the masked-training task."""

    task: str = "generate"
    known_range: list[float] = field(default_factory=lambda: [0.25, 0.75])
    gap_range: list[float] = field(default_factory=lambda: [0.1, 0.4])
    p_unconditional: float = 0.1
    mel_bins: int = 64
    mel_hop: int = 256


AUDIO_TASKS = ("generate", "continue", "inpaint", "mixed", "vocoder")


def audio_task_mask(length: int, task: str, g: torch.Generator, *, known_range=(0.25, 0.75), gap_range=(0.1, 0.4),
                    p_unconditional: float = 0.0) -> torch.Tensor:
    """(1, length) mask of the samples given to the model (1 = given) for masked training.

    continue: the first k samples, k / length uniform in ``known_range``; inpaint: all but one gap,
    its length / length uniform in ``gap_range``, placed uniformly; mixed: either, at random;
    generate, or with probability ``p_unconditional``: nothing given.
    """
    if task not in AUDIO_TASKS or task == "vocoder":
        raise ValueError(f"data.params.task: unknown masking task {task!r}; known: {AUDIO_TASKS[:-1]}")
    mask = torch.zeros(1, length)
    u = torch.rand(3, generator=g).tolist()  # always three draws: the stream does not depend on the branch
    if task == "generate" or u[0] < p_unconditional:
        return mask
    if task == "mixed":
        task = "continue" if u[1] < 0.5 else "inpaint"
    if task == "continue":
        mask[:, :int(round(length * (known_range[0] + (known_range[1] - known_range[0]) * u[2])))] = 1
    else:
        gap = int(round(length * (gap_range[0] + (gap_range[1] - gap_range[0]) * u[2])))
        start = int(torch.randint(0, length - gap + 1, (1,), generator=g))
        mask[:] = 1
        mask[:, start:start + gap] = 0
    return mask


class AudioTrainData(torch.utils.data.Dataset):
    """AudioDataset items as the trainer wants them: x, loss_mask and (when labelled) label; with a
    masked-training task (data.params.task) also concat = [mask, x * mask] (1 + channels, length),
    the model's extra input channels, and a loss mask that keeps only the samples not given."""

    def __init__(self, params: AudioDataParams, path: str | None, seed: int):
        if path is None:
            raise ValueError("data.path: the audio data set needs a folder or a manifest (.csv / .jsonl)")
        self.audio = params.dataset(path, seed)
        classes = params.num_classes if params.num_classes is not None else self.audio.num_classes
        if params.task not in AUDIO_TASKS:
            raise ValueError(f"data.params.task: unknown audio task {params.task!r}; known: {AUDIO_TASKS}")
        for key in ("known_range", "gap_range"):
            lo, hi = getattr(params, key)
            if not 0 < lo <= hi < 1:
                raise ValueError(f"data.params.{key} must satisfy 0 < low <= high < 1, got {[lo, hi]}")
        self.params, self.seed = params, seed
        concat = {"generate": 0, "vocoder": params.mel_bins}.get(params.task, params.channels + 1)
        self.spec = DataSpec((params.channels, params.length), classes, MODALITY,
                             {"sample_rate": params.sample_rate, "concat_channels": concat})

    def __len__(self) -> int:
        return len(self.audio)

    @property
    def rows(self) -> list[dict]:
        """The manifest rows (split, caption ...) of the items (the modality contract's ``rows``)."""
        return self.audio.rows

    @property
    def split_record(self) -> dict | None:
        """How a split-less folder was split (multidiff.manifest.select_split); None when the data named it."""
        return self.audio.split_record

    def set_epoch(self, epoch: int) -> None:
        self.audio.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.audio[index]
        out = {"x": item["x"], "loss_mask": item["loss_mask"]}
        if self.spec.num_classes > 0:
            out["label"] = item["label"] if item["label"] >= 0 else self.spec.num_classes
        out["text"] = item["text"]  # the caption ("" when none), used by models with a text encoder
        p = self.params
        if p.task == "vocoder":  # the waveform given its mel spectrogram
            out["concat"] = mel_conditioning(item["x"][None], p.sample_rate, p.mel_bins, p.mel_hop)[0]
        elif p.task != "generate":
            # a new span each epoch, reproducible from (seed, epoch, index) whatever the batch or worker
            g = item_generator(self.seed, self.audio.epoch, index, stream=1)
            mask = audio_task_mask(p.length, p.task, g, known_range=p.known_range, gap_range=p.gap_range,
                                   p_unconditional=p.p_unconditional)
            out["concat"] = torch.cat([mask, item["x"] * mask])
            out["loss_mask"] = item["loss_mask"] * (1 - mask)
        return out


register_dataset("audio", AudioTrainData, params=AudioDataParams, modality=MODALITY, needs_path=True,
                 description="audio folder or manifest (multidiff.audio.data.AudioDataset)")


def _sample_rate(spec) -> int:
    return int((spec.meta if spec is not None else {}).get("sample_rate", 16000))


def audio_preview(samples: torch.Tensor, out_dir: Path, name: str, *, labels=None, spec=None, max_files: int = 16) -> list[Path]:
    """WAV files of the first samples plus one spectrogram sheet PNG."""
    sr = _sample_rate(spec)
    out_dir = Path(out_dir) / name
    waves = [samples[k].float().clamp(-1, 1) for k in range(min(len(samples), max_files))]
    titles = [f"#{k}" + (f" label {int(labels[k])}" if labels is not None else "") for k in range(len(waves))]
    paths = [save_wav(out_dir / f"{k:03d}.wav", w, sr) for k, w in enumerate(waves)]
    paths.append(spectrogram_sheet(waves, sr, out_dir / "spectrograms.png", titles=titles))
    return paths


#: evaluation classifiers beside a manifest (datasets/train_classifier.py), by metric prefix: trained with
#: noise augmentation (lenient with a noise floor) and on clean clips only (strict), reported side by side
JUDGES = {"classifier": "classifier.safetensors", "classifier_clean": "classifier_clean.safetensors"}


def audio_evaluate(samples: torch.Tensor, config, *, labels=None, spec=None) -> dict:
    """Signal statistics of generated audio, plus SC09-style scores by each evaluation classifier beside
    the manifest (``classifier.safetensors``, noise-augmented, and ``classifier_clean.safetensors``,
    clean clips only; datasets/train_classifier.py): accuracy against the requested labels, Inception
    Score, Frechet distance to the test split, and beside them the judge's own accuracy on the real
    test clips and on the same clips with white noise at 20 dB SNR (``<judge>_real_accuracy``,
    ``<judge>_real_accuracy_snr20``), so a reader sees how lenient each judge is."""
    x = samples.float()
    rms = x.pow(2).mean(dim=tuple(range(1, x.ndim))).sqrt()
    out = {"rms_mean": float(rms.mean()), "peak_mean": float(x.abs().amax(dim=tuple(range(1, x.ndim))).mean()),
           "clipped_fraction": float((x.abs() >= 0.999).float().mean()),
           "silent_fraction": float((rms < 1e-3).float().mean()), "n": int(len(x))}
    path = packed_from(getattr(getattr(config, "data", None), "path", None))  # shards: the manifest they came from
    judges = {prefix: Path(path).parent / name for prefix, name in JUDGES.items()} if path and Path(path).is_file() else {}
    judges = {prefix: f for prefix, f in judges.items() if f.is_file()}
    requested = None
    if judges and labels is not None and spec is not None and spec.num_classes:
        requested = torch.as_tensor(labels)
        keep = requested < spec.num_classes  # null-label samples have no requested class
        x, requested = x[keep], requested[keep]
    for prefix, judge_path in judges.items():
        from .metrics import classifier_scores, judge_report, load_classifier, load_split

        model = load_classifier(judge_path)
        real, real_labels = load_split(path, "test", model.sample_rate, x.shape[-1], limit=2000)
        out.update({f"{prefix}_{k}": v for k, v in classifier_scores(model, x.mean(1, keepdim=True), requested, real).items()})
        out.update({f"{prefix}_{k}": v for k, v in judge_report(model, real, real_labels).items()})
    classifier_path = judges.get("classifier")
    pitches = {}
    if path and Path(path).is_file() and labels is not None:
        pitches = _label_pitches(path, config.data.params.get("label_column", "label"))
        if pitches:
            from .metrics import pitch_accuracy

            keep = [k for k, lab in enumerate(torch.as_tensor(labels).tolist()) if lab in pitches]
            if keep:
                result = pitch_accuracy([samples[k] for k in keep], [pitches[int(labels[k])] for k in keep],
                                        _sample_rate(spec))
                out.update({f"pitch_{k}": v for k, v in result.items()})
                out.update(_noise_floors([samples[k] for k in keep], path, _sample_rate(spec), x.shape[-1]))
    if not pitches and not (classifier_path is not None and classifier_path.is_file()):
        # music without labels (melodies): is it pitched and in tune, next to real held-out clips
        from .metrics import intonation, load_split

        sr = _sample_rate(spec)
        out.update({f"intonation_{k}": v for k, v in intonation(list(samples[:64]), sr).items()})
        if path and Path(path).is_file():
            try:
                real, _ = load_split(path, "test", sr, x.shape[-1], limit=min(64, len(x)))
            except ValueError:  # no held-out split: nothing to compare with
                real = []
            if len(real):
                out.update({f"real_intonation_{k}": v for k, v in intonation(list(real), sr).items()})
        out.update(_noise_floors(list(samples[:64]), path, sr, x.shape[-1]))
    return out


def _noise_floors(waves, manifest, sample_rate: int, length: int, limit: int = 64) -> dict:
    """Pitched audio's noise floor (multidiff.audio.metrics.noise_floor_db: energy outside the
    harmonics, dB) of generated waves, and beside it the real clips' (the test split, else the
    training clips when the data holds no test split; ``real_noise_floor_test_split`` 1 or 0 says which)."""
    from .metrics import load_split, noise_floor

    out = {f"noise_floor_{k}": v for k, v in noise_floor(waves[:limit], sample_rate).items()}
    if manifest and Path(manifest).is_file():
        for split in ("test", "train"):
            try:
                real, _ = load_split(manifest, split, sample_rate, length, limit=limit)
            except ValueError:  # the data holds no such split
                continue
            if len(real):
                out.update({f"real_noise_floor_{k}": v for k, v in noise_floor(list(real), sample_rate).items()})
                out["real_noise_floor_test_split"] = float(split == "test")
                break
    return out


def _label_pitches(manifest, label_column: str) -> dict:
    """label -> MIDI pitch, for manifests with a 'pitch' column (the notes set)."""
    from ..manifest import read_manifest

    rows = read_manifest(manifest)
    if not rows or "pitch" not in rows[0] or label_column not in rows[0]:
        return {}
    return {int(r[label_column]): float(r["pitch"]) for r in rows if r.get(label_column, "") != ""}


def audio_reconstruction_metrics(recon: torch.Tensor, x: torch.Tensor) -> dict:
    """An audio autoencoder's held-out scores beside MSE / PSNR: multi-resolution STFT distance (as
    trained, silence floored at -60 dBFS) and SI-SDR (dB)."""
    from .metrics import multires_stft_distance, si_sdr

    return {"mr_stft": float(multires_stft_distance(recon, x, eps=1e-5, silence_rms=1e-3).mean()),
            "si_sdr_db": float(si_sdr(recon.mean(1), x.mean(1)).mean())}


register_modality(Modality(
    MODALITY, preview=audio_preview, evaluate=audio_evaluate, reconstruction_metrics=audio_reconstruction_metrics,
    autoencoder_params=AudioAutoencoderParams, autoencoder_loss=stft_term, discriminator=stft_discriminator,
    deterministic_data={"split": None, "random_crop": False, "polarity_flip": 0.0},
    file_extensions=tuple(AUDIO_EXTENSIONS), probe=probe_audio,
    description="waveforms (channels, samples): WAV previews, classifier / pitch metrics"))


register_model("audio_oobleck", build_oobleck_entry, params=OobleckParams, modality=MODALITY, kind="autoencoder",
               example_shape=(1, 16384), example_batch=16,
               description="audio VAE for latent diffusion: diffusers' AutoencoderOobleck (multidiff.audio.autoencoder)")


register_model("audio_mel_vocoder", build_mel_vocoder, params=MelVocoderParams, modality=MODALITY, kind="autoencoder",
               example_shape=(1, 8192), example_batch=16,
               description="learned mel vocoder (Vocos: ConvNeXt -> STFT -> iSTFT) for the log-mel recipes "
                           "(multidiff.audio.vocoder)")


# log-mel spectrogram diffusion (multidiff.audio.spectrogram): same backbone, mel bins as channels
def mel_preview(samples, out_dir, name, *, labels=None, spec=None, **kw):
    """Decode to audio (the vocoder spec.meta names, else Griffin-Lim), then the audio previews (WAVs and a
    spectrogram sheet)."""
    return audio_preview(decode_samples(samples, spec), out_dir, name, labels=labels, spec=audio_spec(spec), **kw)


def check_vocoder(spec) -> None:
    """Before sampling: the vocoder spec.meta names loads and hears this model's mel (else InputError)."""
    from .spectrogram import GRIFFIN_LIM, codec_from_meta, vocoder_for

    vocoder_for(spec.meta.get("vocoder") or GRIFFIN_LIM, codec_from_meta(spec.meta))


def mel_evaluate(samples, config, *, labels=None, spec=None):
    """Decode to audio (the vocoder spec.meta names, else Griffin-Lim), then the audio metrics (classifier
    scores, pitch accuracy); ``decoded_by_vocoder`` says which decoded them (1: the vocoder, 0: Griffin-Lim)."""
    from .spectrogram import GRIFFIN_LIM, codec_from_meta, vocoder_for

    by_vocoder = vocoder_for(spec.meta.get("vocoder") or GRIFFIN_LIM, codec_from_meta(spec.meta)) is not None
    metrics = audio_evaluate(decode_samples(samples, spec), config, labels=labels, spec=audio_spec(spec))
    return {**metrics, "decoded_by_vocoder": float(by_vocoder)}


register_dataset("audio_mel", MelTrainData, params=MelDataParams, modality=MEL_MODALITY, needs_path=True,
                 description="log-mel spectrograms of an audio folder or manifest, decoded by Griffin-Lim "
                             "(multidiff.audio.spectrogram)")
register_modality(Modality(MEL_MODALITY, preview=mel_preview, evaluate=mel_evaluate,
                           decode_options={"vocoder": "decode log-mel samples with this mel vocoder checkpoint "
                                                      "(recipes/audio/mel_vocoder.yaml) or griffin-lim (default: "
                                                      "the recipe's data.params.vocoder)"},
                           check_decode=check_vocoder,
                           deterministic_data={"split": None, "random_crop": False, "polarity_flip": 0.0},
                           description="log-mel spectrograms (mel bins, frames) decoded to audio for previews and metrics"))
