"""Baselines the paper compares against, in plain PyTorch (no Lightning or Hydra).

POT reconstructs layers to match the dense network; SparseGPT prunes with an OBS weight update;
Wanda prunes by weight times input-feature norm. All three walk the masked layers in forward
order with :func:`walk_layers` (:mod:`.layerwise`).
"""

from .layerwise import LayerVisit, walk_layers
from .pot import LayerRecord, PotConfig, pot_prune_, reconstruct_layerwise_
from .sparsegpt import SparseGPTConfig, sparsegpt_prune_
from .wanda import WandaConfig, wanda_prune_

__all__ = [
    "LayerRecord", "LayerVisit", "PotConfig", "SparseGPTConfig", "WandaConfig", "pot_prune_",
    "reconstruct_layerwise_", "sparsegpt_prune_", "walk_layers", "wanda_prune_",
]
