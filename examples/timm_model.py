"""A timm network from a local weights file, pruned by unipts.prune on image folders, with timm's
own preprocessing for it (pip install 'unipts[timm]').

    python examples/timm_model.py NAME WEIGHTS CALIB_DIR VAL_DIR SIZE METHOD SPARSITY
    python examples/timm_model.py resnet50 resnet50.pth calib/ val/ 224 unipts_erk 0.7

The weights are a state_dict saved from timm.create_model(NAME, num_classes=<the folders' classes>).
"""
import sys

import timm
import torch
from torchvision import datasets

import unipts

name, weights, calib_dir, val_dir, size, method, sparsity = sys.argv[1:]
classes = datasets.ImageFolder(calib_dir).classes
model = timm.create_model(name, pretrained=False, num_classes=len(classes))  # never downloads
model.load_state_dict(torch.load(weights, weights_only=True))
data_config = timm.data.resolve_data_config({"input_size": (3, int(size), int(size))}, model=model)
prep = timm.data.create_transform(**data_config)  # the network's own resizing and normalisation
calib, val = (datasets.ImageFolder(folder, prep) for folder in (calib_dir, val_dir))
result = unipts.prune(model, calib, evaluation=val, sparsity=float(sparsity), method=method)
s = result.summary
print(f"{name}: top-1 {s['dense_top1']:.4f} -> {s['top1']:.4f} at sparsity {s['achieved_sparsity']:.4f} "
      f"over {len(result.layers)} layers; run: {result.run_dir}")
