"""What unipts's callbacks ask of a LightningModule: any LightningModule, not only unipts's own.

The whole contract:

* **The network to prune.** A callback works on the ``nn.Module`` its ``network`` argument names,
  an attribute path on the LightningModule (``network="net"``, ``network="backbone.body"``).
  Without that argument it uses the module's ``network``: a method returning the network (as
  unipts's :class:`~unipts.lightning.Classifier` and :class:`~unipts.lightning.SparseFinetune`
  have), or the network itself when ``network`` is a submodule.
* **Masks.** The callbacks that allocate sparsity (:class:`~unipts.lightning.SparsitySearch`,
  :class:`~unipts.lightning.FixedAllocation`, :class:`~unipts.lightning.GradualPruning`) make
  the network's Conv2d and Linear layers masked (:func:`unipts.sparse.sparsify`) in their
  ``setup`` of a fit, which Lightning runs before it restores a checkpoint or builds the
  optimizers, so a dense module resumes from a checkpoint of its masked self. A network that
  already has masked layers is left as it is: call ``sparsify`` yourself to exclude layers or
  to use an N:M pattern.
  The other callbacks (:class:`~unipts.lightning.DynamicSparsity`,
  :class:`~unipts.lightning.SparsityMonitor`, :class:`~unipts.lightning.KeepBestStudent`) need
  one of those beside them, or a network sparsified beforehand.
* **The teacher** (:class:`~unipts.lightning.KeepBestStudent` only): the module its ``teacher``
  argument names (default ``"teacher"``), called on images, returning the dense network's
  logits; :class:`unipts.objectives.DenseTeacher` is one.
* **After the fit** the masks are still apart from the weights: :func:`unipts.sparse.unsparsify`
  folds them in and gives back plain Conv2d/Linear layers.

A module that does not meet it is refused in the callback's ``setup`` of a fit, before any
work, with one line (:class:`unipts.UniptsError`) that names what is missing.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch import nn

from ..common import UniptsError
from ..sparse import masked_layers, sparsify


def module_at(pl_module: pl.LightningModule, path: str, caller: str, role: str) -> nn.Module:
    """The ``nn.Module`` at the dotted attribute ``path`` of ``pl_module`` (``role`` says what
    ``caller`` wants it for, in the refusal)."""
    found = pl_module
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise UniptsError(f"{caller}: {type(pl_module).__name__} has no attribute {path!r} ({role})")
    if not isinstance(found, nn.Module):
        raise UniptsError(f"{caller}: {type(pl_module).__name__}.{path} is a {type(found).__name__}, not an "
                          f"nn.Module ({role})")
    return found


def network_of(pl_module: pl.LightningModule, path: str | None, caller: str) -> nn.Module:
    """The network ``caller`` prunes: at ``path`` when given, else the module's ``network``."""
    if path is not None:
        return module_at(pl_module, path, caller, "the network to prune")
    found = getattr(pl_module, "network", None)
    if isinstance(found, nn.Module):  # a submodule named network: the network itself
        return found
    if not callable(found):
        raise UniptsError(f"{caller}: {type(pl_module).__name__} has no network() method; define one returning the "
                          f"nn.Module to prune, or name its attribute: {caller}(network='<attribute>')")
    network = found()
    if not isinstance(network, nn.Module):
        raise UniptsError(f"{caller}: {type(pl_module).__name__}.network() returned a {type(network).__name__}, "
                          "not the nn.Module to prune")
    return network


def is_masked(network: nn.Module) -> bool:
    return next(masked_layers(network), None) is not None


class NetworkCallback(pl.Callback):
    """A callback that works on a LightningModule's network, found as the module's contract
    says; a module without one is refused in ``setup``."""

    #: whether the callback gives the network its masks (and so sparsifies it in ``setup``)
    allocates = False

    def __init__(self, network: str | None = None) -> None:
        self.network_path = network

    def network_of(self, pl_module: pl.LightningModule) -> nn.Module:
        return network_of(pl_module, self.network_path, type(self).__name__)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":  # they act on training only; a folded network tested afterwards stays plain
            return
        network = self.network_of(pl_module)
        if self.allocates:
            if not is_masked(network):
                sparsify(network)  # the buffers a checkpoint restored next holds
        elif not is_masked(network) and not any(getattr(c, "allocates", False) for c in trainer.callbacks):
            raise UniptsError(f"{type(self).__name__}: the network of {type(pl_module).__name__} has no masked layer "
                              "and no callback gives it masks; add SparsitySearch or FixedAllocation to the Trainer's "
                              "callbacks, or call unipts.sparse.sparsify on the network first")
