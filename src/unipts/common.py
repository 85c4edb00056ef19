"""What every module of unipts shares: its user-facing errors and where its configuration tree is.
Below everything else (it imports nothing of unipts), so that the package's ``__init__``, which
re-exports them beside :func:`unipts.prune`, sits on top."""

from pathlib import Path

#: the Hydra configuration tree the commands compose (for ``hydra.compose`` in scripts and notebooks)
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


class UniptsError(Exception):
    """A user-facing error: bad configuration, a missing path, a checkpoint that does not fit.

    The command-line entry points print its message as one line and exit non-zero, so the
    message must name the offending key or path and say what would be valid.
    """


class OptionError(UniptsError, ValueError):
    """A value the engine cannot use, found where the engine reads it (an exclusion pattern that
    names no layer, an N:M pattern no layer can carry): a :class:`ValueError` to code that calls
    the engine, and the user's one line to the entry points. The message begins with the option's
    configuration key."""
