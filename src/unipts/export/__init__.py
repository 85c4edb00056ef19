"""Export of a pruned network for deployment: plain PyTorch (no Lightning or Hydra).

* :func:`fold_state_dict`: masks multiplied into the weights, mask buffers dropped;
* :func:`compress` / :func:`decompress`: the bitmask + non-zero-values file (format in
  :mod:`unipts.export.compressed`), bit-exact both ways;
* :func:`export_onnx`, :func:`check_outputs`, :func:`check_initializers`: ONNX from the folded
  network, checked against PyTorch with onnxruntime and read back weight by weight;
* :func:`export_network`: all files of one network, written atomically together.
"""

from .compressed import compress, decompress, save_compressed
from .fold import count_zeros, fold_state_dict, infer_io, masked_layer_names, prunable_weight_keys, tensor_bytes
from .onnx_export import EXPORTERS, OnnxExportError, check_initializers, check_outputs, export_onnx, initializers, ort_session
from .pipeline import COMPRESSED, MODEL_PT, ONNX, bit_equal, example_batch, export_network, staged

__all__ = [
    "compress", "decompress", "save_compressed", "count_zeros", "fold_state_dict", "infer_io", "masked_layer_names",
    "prunable_weight_keys", "tensor_bytes", "EXPORTERS", "OnnxExportError", "check_initializers", "check_outputs", "export_onnx",
    "initializers", "ort_session", "COMPRESSED", "MODEL_PT", "ONNX", "bit_equal", "example_batch", "export_network", "staged",
]
