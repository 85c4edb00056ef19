"""W&B offline: the run file on disk holds the config, the metrics, the per-layer table and the
search's fitness curve (read back without the W&B service or network)."""

import json

from .conftest import read_summary, run_cli
from .helpers.wandb_reader import records


def _history_values(recs) -> dict[str, list]:
    values: dict[str, list] = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                values.setdefault(key, []).append(item.value_json)
    return values


def test_offline_run_files_hold_config_metrics_table_and_fitness(tmp_path, cli_env):
    run_dir = tmp_path / "wb"
    run_cli("prune", run_dir, "logger=wandb", "data.pretrain.epochs=2", "finetune.epochs=2", "calib.size=64",
            "trainer.enable_progress_bar=false", "trainer.check_val_every_n_epoch=1", "allocation.generations=3",
            "allocation.population=4", "allocation.parents=2", env={**cli_env, "WANDB_MODE": "offline"})
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    recs = records(run_file)

    config = {u.key: json.loads(u.value_json) for r in recs if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["sparsity"]["target"] == 0.9 and config["method"]["name"] == "unipts"

    history = _history_values(recs)
    assert len(history["search/best_fitness"]) == 3  # one point per generation: the fitness curve
    assert all(0.0 <= float(v) <= 1.0 for v in history["search/best_fitness"])
    assert history["val/top1"] and history["sparsity/global"]
    assert abs(float(history["sparsity/global"][-1]) - 0.9) < 0.001

    summary = read_summary(run_dir)
    (table_file,) = run_file.parent.glob("files/media/table/sparsity/layers_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["layer", "numel", "sparsity"]
    assert [row[0] for row in table["data"]] == [layer["name"] for layer in summary["layers"]]
    assert [row[2] for row in table["data"]] == [layer["sparsity"] for layer in summary["layers"]]


def test_logger_destinations_are_checked_before_any_work(tmp_path, monkeypatch):
    """Issue 27: an unwritable TensorBoard folder and W&B online without credentials were tracebacks
    after the dense model and the search."""
    import pytest

    from unipts import UniptsError
    from unipts.spec.loggers import WANDB_TARGET, read_loggers

    tb = {"tensorboard": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger", "save_dir": "/proc/tb"}}
    with pytest.raises(UniptsError, match=r"^logger.tensorboard.save_dir: cannot write in /proc \(.*\), so /proc/tb "
                                          r"cannot be created; give a writable folder$"):
        read_loggers(tb)
    fine = {"csv": {"_target_": "x", "save_dir": str(tmp_path / "new" / "folder")}}
    assert read_loggers(fine) == fine and not (tmp_path / "new").exists()  # tried, nothing left behind

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    online = {"wandb": {"_target_": WANDB_TARGET, "offline": False, "save_dir": str(tmp_path)}}
    with pytest.raises(UniptsError, match=r"^logger.wandb: W&B logs online \(logger.wandb.offline=false\) but cannot "
                                          r"log in \(No API key configured.*or log offline: logger.wandb.offline=true$"):
        read_loggers(online)
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B's own switch wins, as it does for the logger
    assert read_loggers(online) == online
