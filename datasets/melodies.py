"""Build the melody set: folk tunes from the music21 corpus (pip install music21 pretty_midi)
rendered to fixed-length clips with fluidsynth + a GM soundfont, or pretty_midi's synthesizer.

    python datasets/melodies.py --out data/melodies --tunes 500 --seconds 4
"""
import argparse

from multidiff.audio.builders import build_melodies


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/melodies")
    p.add_argument("--tunes", type=int, default=500)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--program", type=int, default=0, help="General MIDI program (0 = piano)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    manifest = build_melodies(a.out, n_tunes=a.tunes, seconds=a.seconds, sample_rate=a.sample_rate,
                              program=a.program, seed=a.seed)
    print(f"wrote manifest: {manifest}")


if __name__ == "__main__":
    main()
