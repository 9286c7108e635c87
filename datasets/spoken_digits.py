"""Build the spoken-digits set with Debian's espeak-ng (apt-get install espeak-ng).

    python datasets/spoken_digits.py --out data/digits [--clips-per-voice 1] [--seed 0]

Writes 16 kHz, 1 s WAV clips of "zero".."nine" over espeak-ng's English accents and voice
variants, and data/digits/manifest.csv (path, label, text, split, accent, variant, speed,
pitch); the test split holds voice variants never seen in training.
"""
import argparse

from multidiff.audio.builders import ESPEAK_ACCENTS, build_spoken_digits


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/digits")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--clips-per-voice", type=int, default=1)
    p.add_argument("--accents", nargs="*", default=list(ESPEAK_ACCENTS))
    p.add_argument("--variants", nargs="*", default=None, help="espeak-ng voice variants (default: all)")
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    manifest = build_spoken_digits(a.out, sample_rate=a.sample_rate, duration=a.duration, accents=a.accents,
                                   variants=a.variants, clips_per_voice=a.clips_per_voice,
                                   test_fraction=a.test_fraction, seed=a.seed)
    print(f"wrote manifest: {manifest}")


if __name__ == "__main__":
    main()
