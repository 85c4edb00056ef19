"""The prune pipeline and the steps every task shares, below the commands and the Python API:
both build a run spec and call :func:`~unipts.pipeline.prune.run` (Lightning is imported there)."""
