"""Callbacks that adapt the sparsity engine to Lightning's loop."""

from __future__ import annotations

import lightning.pytorch as pl

from ..sparse import layer_sparsities, global_sparsity, masked_layers, remask_from_magnitude_


def _student(pl_module: pl.LightningModule):
    return pl_module.network()


class DynamicSparsity(pl.Callback):
    """Dynamic sparse training: every ``interval`` steps, each layer's mask is recomputed from the
    current weight magnitudes at the layer's fixed sparsity (prune-and-regrow), before the step's
    forward pass; the churn (fraction of mask entries that flipped) is logged as
    ``sparsity/churn`` and kept in the callback's state. ``interval=0`` keeps masks static.
    """

    def __init__(self, interval: int = 1) -> None:
        if interval < 0:
            raise ValueError(f"dynamic.interval: {interval} must be >= 0 (0 keeps masks static)")
        self.interval = interval
        self.churn_history: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.interval and step % self.interval == 0:
            churn = remask_from_magnitude_(_student(pl_module))
            self.churn_history.append((step, churn))
            pl_module.log("sparsity/churn", churn, on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module) -> None:
        # The last optimizer step moved weights after the last re-mask; the final masks must
        # follow the final weights just as every earlier step's did.
        if self.interval:
            self.churn_history.append((trainer.global_step, remask_from_magnitude_(_student(pl_module))))

    def state_dict(self) -> dict:
        return {"interval": self.interval, "churn_history": list(self.churn_history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.churn_history = [tuple(x) for x in state_dict.get("churn_history", [])]


class SparsityMonitor(pl.Callback):
    """Logs the measured global sparsity (``sparsity/global``) and every layer's
    (``sparsity/<layer>``) at the end of each training epoch."""

    def __init__(self, per_layer: bool = True) -> None:
        self.per_layer = per_layer

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        student = _student(pl_module)
        masked = {name for name, _ in masked_layers(student)}
        stats = layer_sparsities(student)
        pl_module.log("sparsity/global", global_sparsity(stats, masked), rank_zero_only=True)
        if self.per_layer:
            for s in stats:
                pl_module.log(f"sparsity/{s.name}", s.sparsity, rank_zero_only=True)
