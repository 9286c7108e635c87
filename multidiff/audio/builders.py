"""Builders of audio data sets from what the package registries ship (no downloads).

``build_spoken_digits``: "zero".."nine" spoken by Debian's espeak-ng across its English
accents and voice variants, at random speeds and pitches, trimmed of silence and centred
in fixed-length clips; labelled; split by voice variant so test voices are unseen.
Every builder is deterministic given its seed and writes a CSV manifest.
"""
from __future__ import annotations

import csv
import hashlib
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .io import load_audio, save_wav

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng` (Debian) provides it")
    return exe


def espeak_variants() -> list[str]:
    """Voice variants espeak-ng knows (its !v folder), sorted."""
    out = subprocess.run([espeak_binary(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[4].split("/")[-1] for line in out.splitlines()[1:] if len(line.split()) >= 5]
    return sorted(set(names))


def _stable_fraction(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def center_clip(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad (channels, n) to (channels, length), keeping the middle."""
    n = wave.shape[-1]
    if n >= length:
        start = (n - length) // 2
        return wave[..., start:start + length]
    left = (length - n) // 2
    return torch.nn.functional.pad(wave, (left, length - n - left))


def trim_silence(wave: torch.Tensor, top_db: float = 40.0) -> torch.Tensor:
    import librosa

    _, (start, end) = librosa.effects.trim(wave.mean(0).numpy(), top_db=top_db)
    return wave[..., start:end] if end > start else wave


def _tercile(value: float, lo: float, hi: float, words: tuple[str, str, str]) -> str:
    third = (hi - lo) / 3
    return words[0] if value < lo + third else words[2] if value >= hi - third else words[1]


def digit_caption(word: str, accent: str, speed: int, espeak_pitch: int, speed_range=(130, 200),
                  pitch_range=(25, 75)) -> str:
    """What was synthesised, in words: "seven, deep slow voice, en-us accent" (pitch and speed
    named by the tercile of their range; the middle tercile is not named)."""
    pitch_word = _tercile(espeak_pitch, *pitch_range, ("deep", "", "high"))
    speed_word = _tercile(speed, *speed_range, ("slow", "", "fast"))
    described = " ".join(w for w in (pitch_word, speed_word) if w)
    return f"{word}, {described} voice, {accent} accent" if described else f"{word}, {accent} accent"


def note_caption(instrument: str, pitch: int, velocity: int) -> str:
    """"piano playing C4, soft": the instrument, the note name (MIDI 60 = C4) and loud / soft (velocity >= 100)."""
    import pretty_midi

    return f"{instrument} playing {pretty_midi.note_number_to_name(int(pitch))}, {'loud' if velocity >= 100 else 'soft'}"


def build_spoken_digits(out_dir, *, sample_rate: int = 16000, duration: float = 1.0,
                        accents: Sequence[str] = ESPEAK_ACCENTS, variants: Sequence[str] | None = None,
                        clips_per_voice: int = 1, speed_range=(130, 200), pitch_range=(25, 75),
                        test_fraction: float = 0.15, seed: int = 0, workers: int = 4, progress: bool = True) -> Path:
    """Synthesize labelled spoken digits; returns the manifest path (out_dir/manifest.csv).

    One clip per (digit, accent, variant, k < clips_per_voice) with speed (words/min) and
    pitch (0-99) drawn from the ranges by a seeded RNG. Variants whose stable hash falls
    under ``test_fraction`` go to the test split, the rest to train.
    """
    exe = espeak_binary()
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    variants = list(variants) if variants is not None else espeak_variants()
    rng = random.Random(seed)
    jobs = []
    for accent in accents:
        for variant in variants:
            split = "test" if _stable_fraction(variant, seed) < test_fraction else "train"
            for k in range(clips_per_voice):
                for label, word in enumerate(DIGITS):
                    speed = rng.randint(*speed_range)
                    pitch = rng.randint(*pitch_range)
                    name = f"{word}_{accent}_{variant}_{k}.wav".replace("+", "_")
                    jobs.append(dict(path=f"audio/{name}", label=label, word=word, split=split, accent=accent,
                                     variant=variant, speed=speed, espeak_pitch=pitch,
                                     text=digit_caption(word, accent, speed, pitch, speed_range, pitch_range)))
    length = int(round(sample_rate * duration))

    def synth(job):  # espeak-ng in worker threads; its native-rate audio comes back as it is
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            cmd = [exe, "-v", f"{job['accent']}+{job['variant']}", "-s", str(job["speed"]), "-p", str(job["espeak_pitch"]),
                   "-w", tmp.name, job["word"]]
            subprocess.run(cmd, check=True, capture_output=True)
            wave, rate = load_audio(tmp.name, channels=1)
        return job, wave, rate

    import torchaudio.functional as AF

    rows = []
    iterator = ThreadPoolExecutor(max(1, workers)).map(synth, jobs)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(jobs), desc="espeak-ng digits")
    for job, wave, rate in iterator:
        # resampled and trimmed here, one clip at a time: torch's convolution run from several threads at
        # once can round differently, and the silence trim turns a last-bit difference into a shifted clip
        if rate != sample_rate:
            wave = AF.resample(wave, rate, sample_rate).clamp(-1, 1)
        wave = trim_silence(wave)
        peak = float(wave.abs().max())
        if peak < 1e-4:
            continue
        save_wav(out_dir / job["path"], center_clip(wave * (0.9 / peak), length), sample_rate)
        rows.append(job)
    return write_manifest(out_dir / "manifest.csv",
                          ["path", "label", "word", "text", "split", "accent", "variant", "speed", "espeak_pitch"],
                          rows)


# ------------------------------------------------------------------------------- music
GM_INSTRUMENTS = {0: "piano", 24: "guitar", 40: "violin", 56: "trumpet", 73: "flute", 20: "organ", 19: "church organ",
                  32: "bass", 11: "vibraphone"}
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2")


def find_soundfont() -> str | None:
    for path in SOUNDFONTS:
        if Path(path).is_file():
            return path
    return None


def render_midi(midi, sample_rate: int, soundfont: str | None = None) -> np.ndarray:
    """Render a pretty_midi.PrettyMIDI to mono float32 audio.

    Uses Debian's fluidsynth with a General MIDI soundfont when both are present, and
    pretty_midi's own (sine-based) synthesizer otherwise.
    """
    soundfont = soundfont or find_soundfont()
    exe = shutil.which("fluidsynth")
    if soundfont and exe:
        with tempfile.TemporaryDirectory() as tmp:
            mid, wav = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
            midi.write(str(mid))
            subprocess.run([exe, "-ni", "-g", "0.8", "-F", str(wav), "-r", str(sample_rate), soundfont, str(mid)],
                           check=True, capture_output=True)
            wave, _ = load_audio(wav, sample_rate=sample_rate, channels=1)
            return wave[0].numpy()
    return midi.synthesize(fs=sample_rate).astype(np.float32)


def render_clip(midi, sample_rate: int, length: int) -> torch.Tensor | None:
    """Render a PrettyMIDI to a (1, length) clip peak-normalised to 0.9; None when silent."""
    wave = torch.from_numpy(render_midi(midi, sample_rate))[None]
    wave = wave[..., :length] if wave.shape[-1] >= length else torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    peak = float(wave.abs().max())
    return None if peak < 1e-4 else wave * (0.9 / peak)


def write_manifest(path: Path, fieldnames: Sequence[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_notes(out_dir, *, sample_rate: int = 16000, duration: float = 1.0, pitches=range(48, 84),
                programs: Sequence[int] = (0, 24, 40, 56, 73, 20), velocities=(80, 110),
                test_fraction: float = 0.15, seed: int = 0, progress: bool = True) -> Path:
    """Single notes over MIDI pitches and General MIDI instruments, labelled with both.

    Each clip: one note held for 0.7 * duration then released, rendered at each velocity.
    Manifest columns: path, label (pitch index), pitch_instrument (pitch index * len(programs)
    + program index: one class per pitch and instrument), pitch (MIDI), program, instrument,
    velocity, split, text.
    """
    import pretty_midi

    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pitches = list(pitches)
    length = int(round(sample_rate * duration))
    rows, jobs = [], [(p, prog, vel) for prog in programs for p in pitches for vel in velocities]
    iterator = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc="rendering notes")
    for pitch, program, velocity in iterator:
        midi = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=program)
        inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=0.0, end=0.7 * duration))
        midi.instruments.append(inst)
        wave = render_clip(midi, sample_rate, length)
        if wave is None:
            continue
        name = f"audio/note_p{pitch}_g{program}_v{velocity}.wav"
        save_wav(out_dir / name, wave, sample_rate)
        split = "test" if rng.random() < test_fraction else "train"
        rows.append(dict(path=name, label=pitches.index(pitch),
                         pitch_instrument=pitches.index(pitch) * len(programs) + list(programs).index(program),
                         pitch=pitch, program=program, instrument=GM_INSTRUMENTS.get(program, str(program)),
                         velocity=velocity, split=split,
                         text=note_caption(GM_INSTRUMENTS.get(program, str(program)), pitch, velocity)))
    return write_manifest(out_dir / "manifest.csv", ["path", "label", "pitch_instrument", "pitch", "program",
                                                     "instrument", "velocity", "split", "text"], rows)


def corpus_melodies(max_tunes: int, seed: int = 0, collections=("essenFolksong",)):
    """Yield (name, [(midi_pitch, start_s, end_s), ...]) melodies from the music21 corpus (folk tunes)."""
    from music21 import converter, corpus, note, tempo

    paths = sorted(str(p) for p in corpus.getPaths() if any(c in str(p) for c in collections))
    random.Random(seed).shuffle(paths)
    count = 0
    for path in paths:
        try:
            parsed = converter.parse(path)
        except Exception:  # a corpus file music21 cannot parse: skip it
            continue
        scores = list(parsed.scores) if hasattr(parsed, "scores") else [parsed]
        for k, score in enumerate(scores):
            bpm = 100.0
            marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
            if marks and marks[0].number:
                bpm = float(marks[0].number)
            sec_per_quarter = 60.0 / bpm
            notes = [(n.pitch.midi, float(n.offset) * sec_per_quarter, float(n.offset + n.quarterLength) * sec_per_quarter)
                     for n in score.flatten().notes if isinstance(n, note.Note)]
            if len(notes) >= 8:
                yield f"{Path(path).stem}_{k}", notes
                count += 1
                if count >= max_tunes:
                    return


def build_melodies(out_dir, *, n_tunes: int = 200, seconds: float = 4.0, sample_rate: int = 16000,
                   program: int = 0, transpose_range=(-3, 3), test_fraction: float = 0.1, seed: int = 0,
                   progress: bool = True) -> Path:
    """Folk tunes from the music21 corpus rendered to fixed-length clips (first ``seconds``)."""
    import pretty_midi

    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    length = int(round(seconds * sample_rate))
    rows = []
    iterator = corpus_melodies(n_tunes, seed)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=n_tunes, desc="rendering melodies")
    for name, notes in iterator:
        shift = rng.randint(*transpose_range)
        midi = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=program)
        for pitch, start, end in notes:
            if start >= seconds:
                break
            inst.notes.append(pretty_midi.Note(velocity=100, pitch=int(np.clip(pitch + shift, 21, 108)),
                                               start=start, end=min(end, seconds)))
        midi.instruments.append(inst)
        wave = render_clip(midi, sample_rate, length)
        if wave is None:
            continue
        path = f"audio/{name}.wav"
        save_wav(out_dir / path, wave, sample_rate)
        rows.append(dict(path=path, label=-1, text=name, split="test" if rng.random() < test_fraction else "train"))
    return write_manifest(out_dir / "manifest.csv", ["path", "label", "text", "split"], rows)


SYNTH_TIMBRES = {  # harmonic amplitudes a_k of harmonic k = 1, 2, ...
    "sine": lambda k: 1.0 if k == 1 else 0.0,
    "square": lambda k: 1.0 / k if k % 2 else 0.0,
    "saw": lambda k: 1.0 / k,
    "organ": lambda k: {1: 1.0, 2: 0.6, 3: 0.3, 4: 0.5, 8: 0.25}.get(k, 0.0),
}


def synth_note(pitch: float, sample_rate: int, length: int, timbre: str, *, velocity: float = 1.0,
               note_seconds: float = 0.35, vibrato_cents: float = 0.0, phase: float = 0.0) -> np.ndarray:
    """One band-limited additive-synthesis note (harmonics below Nyquist) with an attack-decay-
    sustain-release envelope; numpy only. Returns (length,) float32 peaking at 0.8 * velocity."""
    t = np.arange(length) / sample_rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    cents = vibrato_cents * np.sin(2 * np.pi * 5.5 * t)
    inst_phase = 2 * np.pi * np.cumsum(f0 * 2 ** (cents / 1200)) / sample_rate + phase
    wave = np.zeros(length)
    amplitudes = SYNTH_TIMBRES[timbre]
    for k in range(1, int(sample_rate / 2 / (f0 * 1.02)) + 1):
        if amplitudes(k):
            wave += amplitudes(k) * np.sin(k * inst_phase)
    attack, release = 0.01, 0.08
    env = np.clip(t / attack, 0, 1) * (0.7 + 0.3 * np.exp(-t / 0.1))
    env *= np.clip(1 - (t - note_seconds) / release, 0, 1)
    wave *= env
    return (0.8 * velocity * wave / max(np.abs(wave).max(), 1e-9)).astype(np.float32)


def build_synth_notes(out_dir, *, sample_rate: int = 16000, duration: float = 0.5, pitches=range(60, 72),
                      timbres: Sequence[str] = ("sine", "square", "saw"), variants: int = 6,
                      test_fraction: float = 0.15, seed: int = 0, progress: bool = True) -> Path:
    """Notes from a numpy additive synthesiser (needs nothing beyond pip): the audio demo's data.

    Each pitch x timbre is rendered ``variants`` times with random velocity, note length,
    vibrato and phase. Manifest columns: path, label (pitch index * len(timbres) + timbre
    index), pitch (MIDI), pitch_index, timbre, split, text.
    """
    unknown = [t for t in timbres if t not in SYNTH_TIMBRES]
    if unknown:
        raise ValueError(f"unknown timbres {unknown}; known: {sorted(SYNTH_TIMBRES)}")
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pitches, length = list(pitches), int(round(sample_rate * duration))
    jobs = [(p, t, v) for p in pitches for t in timbres for v in range(variants)]
    iterator = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc="synthesising notes")
    rows = []
    for pitch, timbre, variant in iterator:
        wave = synth_note(pitch, sample_rate, length, timbre, velocity=rng.uniform(0.5, 1.0),
                          note_seconds=duration * rng.uniform(0.5, 0.8), vibrato_cents=rng.uniform(0, 15),
                          phase=rng.uniform(0, 2 * np.pi))
        name = f"audio/synth_p{pitch}_{timbre}_{variant}.wav"
        save_wav(out_dir / name, torch.from_numpy(wave)[None], sample_rate)
        rows.append(dict(path=name, label=pitches.index(pitch) * len(timbres) + list(timbres).index(timbre),
                         pitch=pitch, pitch_index=pitches.index(pitch), timbre=timbre,
                         split="test" if rng.random() < test_fraction else "train", text=f"{timbre} midi {pitch}"))
    return write_manifest(out_dir / "manifest.csv", ["path", "label", "pitch", "pitch_index", "timbre", "split", "text"],
                          rows)
