"""The Python API on the digits bundled with scikit-learn: a dense network trained in plain PyTorch,
then made 90% sparse by unipts.prune from 512 of its training images.

    python examples/api_digits.py [METHOD] [EPOCHS]      # default: unipts_erk, 30 fine-tune epochs
"""
import sys

import torch
from torch.utils.data import DataLoader

import unipts
from unipts.data import digits
from unipts.models.digits_net import DigitsNet


def train_dense(data, epochs: int = 20) -> torch.nn.Module:
    """What a user already has: a trained network (here a small CNN, a minute on one CPU core)."""
    torch.manual_seed(0)
    net = DigitsNet(num_classes=10, in_channels=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        for x, y in DataLoader(data, batch_size=64, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net


def main(method: str = "unipts_erk", epochs: int = 30, dense_epochs: int = 20) -> unipts.PruneResult:
    data = digits(augment=False)
    dense = train_dense(data.train, dense_epochs)
    result = unipts.prune(dense, data.train, evaluation=data.eval, sparsity=0.9, method=method, calib_size=512,
                          overrides=[f"finetune.epochs={epochs}"])
    s = result.summary
    print(f"{method}: top-1 {s['dense_top1']:.4f} -> {s['top1']:.4f} at sparsity {s['achieved_sparsity']:.4f}")
    for layer in result.layers:
        print(f"  {layer['name']:<12} {layer['sparsity']:.3f} of {layer['numel']} weights")
    return result


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["unipts_erk"]), *(int(a) for a in sys.argv[2:3]))
