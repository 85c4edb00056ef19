"""``unipts.prune`` from Python: the command's pipeline and results, from objects instead of a config tree."""

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import unipts
from unipts import UniptsError
from unipts.data import digits
from unipts.models.digits_net import DigitsNet
from unipts.sparse import MaskedLayer

from .conftest import FAST, read_summary, run_cli

# The command's run both calls below must reproduce: the embedded default at a small size, UniPTS
# with ERK (its distillation and dynamic masks), the data set's own order without augmentation.
SETTINGS = [*FAST, "method=unipts_erk", "finetune.epochs=2", "data.augment=false", "seed=1"]


def _dense_of(summary: dict) -> nn.Module:
    net = DigitsNet(num_classes=10, in_channels=1)
    net.load_state_dict(torch.load(summary["dense_ckpt"], weights_only=True))
    return net


def _same_checkpoints(a, b) -> bool:
    sa = torch.load(a / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(b / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def small_digits():
    return digits(augment=False)


@pytest.fixture(scope="module")
def command_run(tmp_path_factory, cli_env):
    run_dir = tmp_path_factory.mktemp("command") / "run"
    run_cli("prune", run_dir, *SETTINGS, env=cli_env)
    return run_dir, read_summary(run_dir)


def test_a_named_data_set_gives_what_the_command_gives(tmp_path, command_run):
    """The same dense network, data, settings and seed: the same sparse network, bit for bit."""
    run_dir, cli = command_run
    result = unipts.prune(_dense_of(cli), "digits", sparsity=0.9, seed=1, method="unipts_erk",
                          run_dir=tmp_path / "api", overrides=[o for o in SETTINGS if "method=" not in o])
    assert result.summary["top1"] == cli["top1"] and result.summary["achieved_sparsity"] == cli["achieved_sparsity"]
    assert _same_checkpoints(run_dir, tmp_path / "api")


def test_a_dataset_of_ones_own_gives_what_the_command_gives(tmp_path, command_run, small_digits):
    run_dir, cli = command_run
    result = unipts.prune(_dense_of(cli), small_digits.train, evaluation=small_digits.eval, sparsity=0.9, seed=1,
                          method="unipts_erk", calib_size=64, run_dir=tmp_path / "api",
                          overrides=["finetune.epochs=2", "trainer.check_val_every_n_epoch=1"])
    assert result.summary["top1"] == cli["top1"] and result.summary["dense_top1"] == cli["dense_top1"]
    assert _same_checkpoints(run_dir, tmp_path / "api")


def test_the_result_is_a_plain_sparse_module_and_the_callers_model_is_untouched(tmp_path, small_digits, caplog):
    import logging

    net = DigitsNet(num_classes=10, in_channels=1, width=8)
    before = copy.deepcopy(net.state_dict())
    images = torch.stack([small_digits.train[i][0] for i in range(96)])
    chatty = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = chatty.level
    caplog.set_level(logging.INFO)
    result = unipts.prune(net, images, sparsity=0.75, method="magnitude", run_dir=tmp_path / "run")
    said = [r.getMessage() for r in caplog.records]
    assert any("summary:" in m for m in said) and not any("GPU available" in m for m in said)  # no Lightning banner
    assert chatty.level == level  # the caller's logging is left as it was
    unipts.prune(net, images, sparsity=0.75, method="magnitude", run_dir=tmp_path / "verbose",
                 overrides=["runtime.verbose=true"])
    assert any("GPU available" in r.getMessage() for r in caplog.records)  # asked for: the banner shows
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training
    assert not any(k.endswith(".mask") for k in result.model.state_dict())
    assert not any(isinstance(m, MaskedLayer) for m in result.model.modules())  # plain Conv2d/Linear again
    zeros = sum(int((result.model.state_dict()[k] == 0).sum()) for k in result.sparse_keys)
    total = sum(result.model.state_dict()[k].numel() for k in result.sparse_keys)
    assert zeros / total == pytest.approx(0.75, abs=1e-3) == result.summary["achieved_sparsity"]
    assert result.summary["top1"] is None and result.summary["calib_size"] == 96  # no evaluation images given
    assert [layer["name"] for layer in result.layers] == [k.removesuffix(".weight") for k in result.sparse_keys]


def test_a_loader_and_labelled_pairs_evaluate_and_export(tmp_path, small_digits):
    from lightning.pytorch.loggers import CSVLogger

    net = DigitsNet(num_classes=10, in_channels=1, width=8)
    images = torch.stack([small_digits.eval[i][0] for i in range(len(small_digits.eval))])
    labels = torch.stack([torch.as_tensor(small_digits.eval[i][1]) for i in range(len(small_digits.eval))])
    logger = CSVLogger(tmp_path / "mine", name="", version="")
    result = unipts.prune(net, DataLoader(small_digits.train, batch_size=7), evaluation=(images, labels),
                          sparsity=0.5, method="unipts_erk", calib_size=128, run_dir=tmp_path / "run",
                          overrides=["finetune.epochs=1"], loggers=[logger])
    assert 0.0 <= result.summary["top1"] <= 1.0 and result.summary["calib_size"] == 128
    assert (tmp_path / "mine" / "metrics.csv").is_file()  # the caller's logger saw the run
    report = result.export(tmp_path / "export")
    assert report["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert report["onnx_matches_torch"] and report["compressed_roundtrip_exact"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["allocation"] == "erk"  # unipts_erk's


class _Pil(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        from PIL import Image

        return Image.new("L", (8, 8)), 0


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1, 8, 8), 0


def _images(n=32):
    return torch.randn(n, 1, 8, 8)


@pytest.mark.parametrize("kwargs, key", [
    (dict(model="digits_net"), "model"),
    (dict(calibration=_Pil()), "calibration"),
    (dict(calibration=_Stream()), "calibration"),
    (dict(calibration=torch.zeros(4, 8, 8)), "calibration"),  # no channel axis: the network refuses it
    (dict(calibration=(_images(), torch.full((32,), 10))), "calibration"),  # label 10 of 10 classes
    (dict(calibration=(_images(), torch.zeros(31))), "calibration"),
    (dict(evaluation=_images()), "evaluation"),  # top-1 needs labels
    (dict(sparsity=1.5), "sparsity.target"),
    (dict(method="nonesuch"), "method"),
    (dict(calibration="nonesuch"), "calibration"),
    (dict(overrides=["finetune.nonesuch=1"]), "overrides"),
    (dict(overrides=["+sparsity.targt=0.5"]), "sparsity.targt"),
    (dict(method="gmp_full"), "calibration"),  # it trains on labels, the images have none
    (dict(overrides=["checkpoint.monitor=val/top1"]), "checkpoint.monitor"),
    (dict(calibration="digits", evaluation=(_images(), torch.zeros(32))), "evaluation"),
    (dict(loggers=["csv"]), "loggers[0]"),
    (dict(run_dir=None, trainer={"devices": 2}), "run_dir"),  # every DDP process must find the same folder
])
def test_what_cannot_work_is_refused_in_one_line_before_any_work(tmp_path, kwargs, key):
    args = {"model": DigitsNet(num_classes=10, in_channels=1, width=8), "calibration": _images(), "sparsity": 0.5,
            "run_dir": tmp_path / "run", "method": "magnitude", **kwargs}
    with pytest.raises(UniptsError) as refused:
        unipts.prune(args.pop("model"), args.pop("calibration"), **args)
    assert str(refused.value).startswith(f"{key}:") and "\n" not in str(refused.value)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_run_directory_holding_a_run_is_refused(tmp_path):
    net = DigitsNet(num_classes=10, in_channels=1, width=8)
    unipts.prune(net, _images(), sparsity=0.5, method="magnitude", run_dir=tmp_path / "run")
    with pytest.raises(UniptsError, match=r"^run_dir: .* already holds a finished run"):
        unipts.prune(net, _images(), sparsity=0.5, method="magnitude", run_dir=tmp_path / "run")


def test_inside_a_hydra_application_its_state_is_left_as_it_was(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=unipts.CONFIG_DIR, version_base="1.3", job_name="theirs"):
        ours = GlobalHydra.instance().hydra
        result = unipts.prune(DigitsNet(num_classes=10, in_channels=1, width=8), TensorDataset(_images()),
                              sparsity=0.5, method="magnitude", run_dir=tmp_path / "run")
        assert GlobalHydra.instance().hydra is ours and compose(config_name="eval").task == "eval"
    assert result.summary["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)


class _TinyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        tokens, _ = self.attn(tokens, tokens, tokens)
        return self.fc(tokens.mean(1))


def test_an_attention_network_is_pruned_and_exported_by_its_own_weight_names(tmp_path):
    result = unipts.prune(_TinyAttention(), torch.randn(64, 3, 16, 16), sparsity=0.5, method="magnitude",
                          run_dir=tmp_path / "run")
    assert result.sparse_keys == ["conv.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"]
    assert type(result.model.attn) is nn.MultiheadAttention  # a plain module again
    assert result.export(tmp_path / "export", onnx=False)["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
