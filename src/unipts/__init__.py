"""unipts: post-training sparsity (UniPTS, Xie et al., CVPR 2024) as a Lightning + Hydra application."""

__version__ = "0.1.0"


class UniptsError(Exception):
    """A user-facing error: bad configuration, a missing path, a checkpoint that does not fit.

    The command-line entry points print its message as one line and exit non-zero, so the
    message must name the offending key or path and say what would be valid.
    """
