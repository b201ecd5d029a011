"""User errors, exit codes, argument checks and the one-line form of an exception.

A user error (a missing or unreadable file, a bad flag value, a clash with an earlier run) is an
:class:`LCNetError`; the command line prints its message as one line and exits with
:data:`EXIT_USAGE`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import numbers

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "LCNetError",
    "check_int",
    "flag",
    "one_line",
]

EXIT_USAGE = 2  # argparse's code for bad usage; ours for every user error
EXIT_INTERRUPTED = 130  # the shell's code for "ended by SIGINT"


class LCNetError(ValueError):
    """A user error: a missing or unreadable file, a bad flag value, a clash with a previous run.

    A ``ValueError``, so that every argument check of the package raises one exception type.
    The command line prints its message as one line on stderr and exits with code 2.
    """


def flag(name: str) -> str:
    """``"max_steps"`` -> ``"--max-steps"``."""
    return "--" + name.replace("_", "-")


def check_int(
    name: str, value: object, minimum: int | None = None, *, optional: bool = False
) -> int:
    """``value`` as an int >= ``minimum``, else :class:`LCNetError` naming ``name`` and the value.

    bool is refused (``True`` as a size is a bug, not a request for 1); ``optional`` lets None
    through.
    """
    if value is None and optional:
        return value  # type: ignore[return-value]
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or (minimum is not None and value < minimum):  # type: ignore[operator]
        what = {0: "an integer >= 0", 1: "a positive integer"}.get(
            minimum, "an integer" if minimum is None else f"an integer >= {minimum}"
        )
        raise LCNetError(f"{name} must be {what}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def one_line(exc: BaseException, prefer: str | None = None) -> str:
    """The message of ``exc`` on one line; with ``prefer``, the first line starting with it,
    if any (e.g. the line of ``torch.load``'s long message that says what went wrong).

    A DataLoader worker re-raises with the worker's traceback (``Caught ValueError in
    DataLoader worker process 0. Original Traceback ...``), whose last line is
    ``module.Type: message``: the message is taken from there.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    chosen = [line for line in lines if prefer is not None and line.startswith(prefer)]
    if chosen:
        return chosen[0]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        head, sep, tail = lines[-1].partition(": ")
        return tail if sep and " " not in head else lines[-1]
    return " ".join(lines)
