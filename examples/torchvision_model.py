"""A torchvision classifier from a local weights file: pruned, evaluated and exported, no Hydra.

    python examples/torchvision_model.py NAME WEIGHTS CALIB_DIR VAL_DIR SIZE METHOD SPARSITY
    python examples/torchvision_model.py resnet18 resnet18.pth calib/ val/ 224 unipts_erk 0.7

CALIB_DIR and VAL_DIR are ImageFolder trees (one folder per class); the weights must fit NAME with
as many classes as the folders have.
"""
import sys

import torch
import torchvision
from torchvision import transforms

import unipts

name, weights, calib_dir, val_dir, size, method, sparsity = sys.argv[1:]
prep = transforms.Compose([transforms.Resize(int(size)), transforms.CenterCrop(int(size)), transforms.ToTensor(),
                           transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
calib, val = (torchvision.datasets.ImageFolder(folder, prep) for folder in (calib_dir, val_dir))
model = torchvision.models.get_model(name, num_classes=len(calib.classes))
model.load_state_dict(torch.load(weights, weights_only=True))
result = unipts.prune(model, calib, evaluation=val, sparsity=float(sparsity), method=method)
s = result.summary
print(f"top-1 {s['dense_top1']:.4f} -> {s['top1']:.4f} at sparsity {s['achieved_sparsity']:.4f}; run: {result.run_dir}")
print("exported:", result.export()["files"])
