"""multidiff.audio: diffusion over waveforms, MDCT patches, log-mel spectrograms and latents.

* io: load_audio / save_wav / save_audio / probe_audio, spectrogram sheets
* unet1d: the waveform UNet1D; mdct: its MDCT front end; autoencoder: the Oobleck latent route
* spectrogram: the log-mel codec and Griffin-Lim; vocoder: the learned mel vocoder
* metrics: STFT distances, pitch, intonation, noise floor, the evaluation classifiers
* builders: the spoken-digit, notes and melody data sets; registry: the trainer's audio plug-ins
"""
from .io import load_audio, probe_audio, save_audio, save_wav

__all__ = ["load_audio", "probe_audio", "save_audio", "save_wav"]
