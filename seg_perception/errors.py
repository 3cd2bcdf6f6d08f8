"""The one error type for a request that cannot be done as asked, whichever layer finds it."""

from __future__ import annotations


class UsageError(Exception):
    """A missing file or folder, an unknown name, an option the model cannot take: the user's to fix, not a bug.

    The CLI prints it as one line and exits 2 instead of tracing back. Errors of this kind elsewhere in the
    package (evaluation, checkpoints, backends) derive from it too, beside the built-in type they always had.
    """


class OptionError(UsageError, ValueError):
    """An option that does not apply to what it was given (e.g. `--dynamic` for a fixed-size family)."""


class EvalError(UsageError, RuntimeError):
    """Input that cannot be evaluated (missing folder, unmatched files, a bag without the topic); names it."""
