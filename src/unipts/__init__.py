"""unipts: post-training sparsity (UniPTS, Xie et al., CVPR 2024) as a Lightning + Hydra application."""

from pathlib import Path

__version__ = "0.1.0"

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


def __getattr__(name: str):
    # `unipts.prune` and its result loaded on first use: importing unipts (the commands' --help) stays free of torch
    if name in ("prune", "PruneResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'unipts' has no attribute {name!r}")
