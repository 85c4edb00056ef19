"""The compressed sparse file (``model.sparse.pt``): a bitmask and the non-zero values per weight.

Format, version 1: one ``torch.save`` archive (loadable with ``torch.load(..., weights_only=True)``)
holding a dict

    {"format": "unipts.sparse", "version": 1,
     "order":  [every state_dict key, in order],
     "dense":  {key: tensor},                       # stored as it is (BN, biases, dense layers)
     "sparse": {key: {"shape": [d0, d1, ...],       # the tensor's shape
                      "dtype": "float32",           # its dtype (torch name without "torch.")
                      "bits": uint8 tensor,         # np.packbits of the non-zero flags
                      "values": 1-D tensor}}}       # the non-zero entries, in the tensor's dtype

For a sparse entry, the tensor is flattened in row-major (C) order; flag ``i`` is 1 when element
``i`` is not zero (NaN counts as a value); ``bits`` packs the flags 8 per byte, first flag in the
most significant bit, the last byte padded with zeros (``numpy.packbits``, ``bitorder="big"``),
i.e. ``ceil(numel / 8)`` bytes; ``values`` holds the flagged elements in the same order, in the
tensor's own dtype (fp32 for fp32 weights, so nothing is rounded). :func:`decompress` rebuilds
every tensor bit for bit, with one exception: a negative zero (-0.0, which ``w * 0`` gives for a
negative ``w``) is a zero like any other and comes back as +0.0 (equal as a value, so
``torch.equal`` holds). :func:`unipts.export.export_network` writes +0.0 for every pruned weight, so
its files round-trip bit for bit.

A weight at sparsity ``s`` costs ``numel * ((1 - s) * itemsize + 1/8)`` bytes instead of
``numel * itemsize``: with fp32, about 0.13x of dense at 90%, 0.33x at 70%, 0.53x at 50% (plus the
archive's few hundred bytes per tensor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

FORMAT, VERSION = "unipts.sparse", 1


def _encodable(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and not t.is_complex() and t.dtype != torch.bool and t.numel() > 0


def compress(state: Mapping[str, torch.Tensor], sparse_keys: Iterable[str]) -> dict:
    """The format-1 dict of ``state``: the tensors named in ``sparse_keys`` as bitmask + values,
    every other tensor as it is."""
    sparse_keys = set(sparse_keys)
    unknown = sorted(sparse_keys - set(state))
    if unknown:
        raise KeyError(f"sparse keys not in the state_dict: {unknown[:5]}")
    dense: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict] = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if key not in sparse_keys or not _encodable(t):
            dense[key] = t.clone()
            continue
        flat = t.contiguous().reshape(-1)
        flags = flat != 0
        sparse[key] = {
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "bits": torch.from_numpy(np.packbits(flags.numpy(), bitorder="big")),
            "values": flat[flags].clone(),
        }
    return {"format": FORMAT, "version": VERSION, "order": list(state), "dense": dense, "sparse": sparse}


def decompress(obj: dict | str | Path) -> dict[str, torch.Tensor]:
    """The state_dict back from a format-1 dict or file, bit-exact, in its original key order."""
    if not isinstance(obj, dict):
        obj = torch.load(obj, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} archive")
    if obj.get("version") != VERSION:
        raise ValueError(f"{FORMAT} version {obj.get('version')!r} is not supported (this reader: {VERSION})")
    out: dict[str, torch.Tensor] = {}
    for key in obj["order"]:
        if key in obj["dense"]:
            out[key] = obj["dense"][key]
            continue
        entry = obj["sparse"][key]
        shape, dtype = entry["shape"], getattr(torch, entry["dtype"])
        numel = int(np.prod(shape, dtype=np.int64))
        flags = np.unpackbits(entry["bits"].numpy(), count=numel, bitorder="big").astype(bool)
        values = entry["values"]
        if int(flags.sum()) != values.numel():
            raise ValueError(f"{key}: {int(flags.sum())} flags set but {values.numel()} values stored")
        flat = torch.zeros(numel, dtype=dtype)
        flat[torch.from_numpy(flags)] = values
        out[key] = flat.reshape(shape)
    return out


def save_compressed(state: Mapping[str, torch.Tensor], path: str | Path, sparse_keys: Iterable[str]) -> int:
    """Write ``compress(state, sparse_keys)`` to ``path``; returns the file's size in bytes."""
    torch.save(compress(state, sparse_keys), path)
    return Path(path).stat().st_size
