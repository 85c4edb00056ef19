"""The sparsity engine: plain PyTorch, no Lightning or Hydra."""

from .allocation import RULES, allocate, regrow_decode
from .bn import reestimate_bn_
from .masked import (
    MaskedConv2d,
    MaskedLayer,
    MaskedLinear,
    MaskedMultiheadAttention,
    MaskedOutProjection,
    exclude_patterns,
    fold_masks_,
    masked_layers,
    sparsify,
    unmaskable_layers,
    unsparsify,
)
from .masks import magnitude_mask, masks_at_target, remask_from_magnitude_, set_masks_, zero_counts
from .nm import (
    model_pattern, nm_allocation, nm_mask, parse_pattern, semi_structured_skip_reason, set_pattern_,
    to_semi_structured_,
)
from .probe import unmasked_weight_reads
from .stats import LayerSparsity, global_sparsity, layer_sparsities

__all__ = [
    "RULES", "allocate", "regrow_decode", "reestimate_bn_", "MaskedConv2d", "MaskedLayer",
    "MaskedLinear", "MaskedMultiheadAttention", "MaskedOutProjection", "fold_masks_", "masked_layers", "sparsify",
    "unmaskable_layers", "unsparsify", "exclude_patterns", "unmasked_weight_reads",
    "magnitude_mask", "masks_at_target", "remask_from_magnitude_", "set_masks_", "zero_counts", "LayerSparsity",
    "global_sparsity", "layer_sparsities", "model_pattern", "nm_allocation", "nm_mask", "parse_pattern",
    "semi_structured_skip_reason", "set_pattern_", "to_semi_structured_",
]
