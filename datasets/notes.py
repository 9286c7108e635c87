"""Build the single-note set: MIDI pitches x General MIDI instruments, rendered with Debian's
fluidsynth and a GM soundfont (apt-get install fluidsynth timgm6mb-soundfont) when present,
with pretty_midi's own synthesizer otherwise.

    python datasets/notes.py --out data/notes [--low 48 --high 84] [--seed 0]
"""
import argparse

from multidiff.audio.builders import build_notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/notes")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--low", type=int, default=48)
    p.add_argument("--high", type=int, default=84, help="exclusive")
    p.add_argument("--programs", type=int, nargs="*", default=[0, 24, 40, 56, 73, 20],
                   help="GM programs (default: piano, guitar, violin, trumpet, flute, reed organ; the church "
                        "organ, 19, sounds an octave below its note in TimGM6mb, so its pitch labels would be wrong)")
    p.add_argument("--velocities", type=int, nargs="*", default=[80, 110])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    manifest = build_notes(a.out, sample_rate=a.sample_rate, pitches=range(a.low, a.high), programs=a.programs,
                           velocities=a.velocities, seed=a.seed)
    print(f"wrote manifest: {manifest}")


if __name__ == "__main__":
    main()
