"""Hydra entry points: compose the configuration, build, run, write the summary."""
