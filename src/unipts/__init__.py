"""unipts: post-training sparsity (UniPTS, Xie et al., CVPR 2024) as a Lightning + Hydra application."""

__version__ = "0.1.0"

from .common import CONFIG_DIR, OptionError, UniptsError

__all__ = ["CONFIG_DIR", "OptionError", "UniptsError", "prune", "PruneResult", "__version__"]


def __getattr__(name: str):
    # `unipts.prune` and its result loaded on first use: importing unipts (the commands' --help) stays free of torch
    if name in ("prune", "PruneResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'unipts' has no attribute {name!r}")
