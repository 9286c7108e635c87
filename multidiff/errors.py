"""Errors that mean "the input is wrong", as opposed to a bug or a failed run.

Every one names the file, key, argument or shape at fault in its message. The command line
prints it as one line (``multidiff VERB: message``) and exits with code 2, without a
traceback and without writing anything (docs/reliability.md).
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, config key, command-line argument or shape; the message names it."""


class CheckpointError(InputError):
    """A checkpoint or pipeline folder that cannot be read as one (missing, truncated or corrupt
    file, or a checkpoint of another model / optimizer than the config asks to resume)."""


class DataError(InputError):
    """A data set that cannot be used: a bad manifest row or label, an unreadable array, or no
    usable file at all (single bad files are skipped and counted instead)."""


def one_line(err: BaseException | str) -> str:
    """An error (or its message) as one line: the last line of a DataLoader worker's wrapped traceback."""
    text = str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and "Traceback" in text:
        last = lines[-1]
        _, sep, rest = last.partition("Error: ")
        return rest if sep and " " not in last.split(":")[0] else last
    return " ".join(lines)


def finite_float(text: str) -> float:
    """argparse ``type=`` for a float option that must be finite (rejects nan and inf by name)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
