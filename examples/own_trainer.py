"""unipts's callbacks in your own LightningModule and Trainer: your module names the network to prune
(network()) and distils it from a frozen dense copy (DenseTeacher); SparsitySearch (or FixedAllocation(0.9,
"erk")) allocates the sparsity when the fit starts, DynamicSparsity re-masks as it trains.
`python examples/own_trainer.py [--fast]`: digits on CPU, about 20 s (--fast: under 10 s)."""

import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from unipts.data import digits
from unipts.lightning import DynamicSparsity, SparsitySearch
from unipts.models import DigitsNet
from unipts.objectives import BaseDecayedKL, DenseTeacher
from unipts.sparse import global_sparsity, layer_sparsities, unsparsify


class Distill(pl.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.teacher = DenseTeacher(net)  # a frozen copy, taken while net is dense
        self.objective = BaseDecayedKL()

    def network(self):  # what unipts's callbacks prune
        return self.net

    def training_step(self, batch, batch_idx):
        images, _ = batch  # no labels: the dense network teaches
        return self.objective(self.net(images), self.teacher(images), self.current_epoch)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.trainer.max_epochs)]


def top1(net, data):
    x, y = next(iter(DataLoader(data, batch_size=len(data))))
    with torch.no_grad():
        return (net.eval()(x).argmax(1) == y).float().mean().item()


def main(fast=False, sparsity=0.9):
    pl.seed_everything(0, verbose=False)
    splits, net = digits(), DigitsNet(width=16)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4 if fast else 10):  # stands in for the trained dense network you have
        for x, y in DataLoader(splits.train, batch_size=64, shuffle=True):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    dense_top1 = top1(net, splits.eval)
    calibration = Subset(splits.train, range(256 if fast else 512))  # a few hundred images
    search = SparsitySearch(sparsity, calibration=calibration, generations=4 if fast else 15, progress=False)
    trainer = pl.Trainer(max_epochs=6 if fast else 15, callbacks=[search, DynamicSparsity(interval=1)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Distill(net.train()), DataLoader(calibration, batch_size=64, shuffle=True))
    sparse = unsparsify(net)  # masks folded into the weights: plain Conv2d/Linear layers
    result = {"dense_top1": dense_top1, "top1": top1(sparse, splits.eval),
              "sparsity": global_sparsity(layer_sparsities(sparse))}
    print(result)
    return result


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
