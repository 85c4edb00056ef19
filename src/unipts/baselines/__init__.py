"""Baselines the paper compares against, in plain PyTorch (no Lightning or Hydra)."""

from .pot import LayerRecord, PotConfig, pot_prune_, reconstruct_layerwise_

__all__ = ["LayerRecord", "PotConfig", "pot_prune_", "reconstruct_layerwise_"]
