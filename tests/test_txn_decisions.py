"""Issue 27, in process: the functions that decide whether a command may start in a run or sweep
directory, what a signal ends in, and that the last epoch's checkpoint holds the final model."""

import json
import os
import shlex
import signal
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unipts import UniptsError
from unipts.runs.record import check_start

CONFIG = {"task": "prune", "seed": 0, "sparsity": {"target": 0.9}, "paths": {"output_dir": "/x"}}


@pytest.fixture(autouse=True)
def _signal_handlers():
    """A stop leaves SIGINT and SIGTERM ignored (the process is ending): not so for the next test."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def _spec(run_dir: Path, ckpt_path=None, **changes) -> SimpleNamespace:
    config = json.loads(json.dumps(CONFIG))
    config.update(changes)
    return SimpleNamespace(run_dir=run_dir, ckpt_path=ckpt_path, config=config)


def _recorded(run_dir: Path, *files: str) -> Path:
    """A run directory whose run was accepted (its record written), holding ``files``."""
    (run_dir / ".unipts").mkdir(parents=True)
    (run_dir / ".unipts" / "config.json").write_text(json.dumps(CONFIG))
    for name in files:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(b"result")
    return run_dir


# -- results are never overwritten ----------------------------------------------------------------

def test_resuming_a_finished_run_reports_it_and_changes_nothing(tmp_path):
    from unipts.runs.identity import identity_record
    from unipts.runs.record import RunFinished

    run_dir = _recorded(tmp_path / "run", "summary.json", "checkpoints/final.ckpt")
    torch.save({"unipts_identity": identity_record(CONFIG)}, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(RunFinished) as err:
        check_start(_spec(run_dir, "last"), trains=True)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{run_dir}: the run has finished (checkpoints/final.ckpt, summary.json)")
    assert "nothing was changed" in line and "leave ckpt_path and hydra.run.dir out" in line
    with pytest.raises(UniptsError, match=r"^sparsity.target: differ"):  # another target: that is said first
        check_start(_spec(run_dir, "last", sparsity={"target": 0.5}), trains=True)
    (run_dir / ".unipts" / "config.json").unlink()  # the identity inside the checkpoint says it as well
    with pytest.raises(UniptsError, match=r"^sparsity.target: differ from the run being resumed \(the checkpoint"):
        check_start(_spec(run_dir, "last", sparsity={"target": 0.5}), trains=True)
    with pytest.raises(RunFinished):
        check_start(_spec(run_dir, "last"), trains=True)


def test_a_directory_holding_results_is_refused_for_a_new_run_even_without_its_record(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "final.ckpt").write_bytes(b"result")  # .unipts/ lost, the result is there
    with pytest.raises(UniptsError, match=r"already holds a run \(it has checkpoints/final.ckpt\); resume it"):
        check_start(_spec(run_dir), trains=True)
    (run_dir / "summary.json").write_text("{}")
    with pytest.raises(UniptsError, match=r"already holds a finished run .* never overwritten; leave hydra.run.dir"):
        check_start(_spec(run_dir), trains=True)


# -- a run stopped before its first checkpoint -----------------------------------------------------

@pytest.mark.parametrize("trains", [True, False], ids=["fine-tune", "one-shot"])
def test_a_run_stopped_before_its_first_checkpoint_starts_over_on_ckpt_path_last(tmp_path, trains, caplog):
    run_dir = _recorded(tmp_path / "run", "csv/metrics.csv")
    caplog.set_level("INFO", logger="unipts")
    assert check_start(_spec(run_dir, "last"), trains=trains, refusal="method=magnitude") is None
    assert f"resume: {run_dir} was stopped before its first checkpoint; starting it again" in caplog.text
    with pytest.raises(UniptsError, match=r"^seed: differ from the run being resumed"):  # still the same run
        check_start(_spec(run_dir, "last", seed=3), trains=trains, refusal="method=magnitude")
    # and the refusal of a plain start says how to continue it
    with pytest.raises(UniptsError, match="resume it with ckpt_path=last .a run stopped before its first checkpoint"):
        check_start(_spec(run_dir), trains=trains)


def test_ckpt_path_last_without_a_run_still_names_the_missing_checkpoint(tmp_path):
    with pytest.raises(UniptsError, match=r"^ckpt_path: no checkpoint at .*last.ckpt"):
        check_start(_spec(tmp_path / "fresh", "last"), trains=True)


def test_a_run_stopped_before_it_was_accepted_is_started_again_without_ckpt_path(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)  # Hydra's start, killed before unipts recorded the run
    with pytest.raises(UniptsError, match=r"^ckpt_path: no checkpoint at .*last.ckpt \(.*; a run stopped before it "
                                          r"started, with no record in its directory, is started again without ckpt_path\)$"):
        check_start(_spec(run_dir, "last"), trains=True)
    assert check_start(_spec(run_dir), trains=True) is None  # which is accepted, in the same directory


# -- the last epoch's checkpoint is the final model ------------------------------------------------

class _Student(pl.LightningModule):
    """A masked two-layer network trained hard enough that its masks move at every step."""

    def __init__(self):
        super().__init__()
        from unipts.sparse import allocate, set_masks_, sparsify

        self.model = sparsify(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
        set_masks_(self.model, allocate(self.model, "uniform", 0.5))

    def network(self):
        return self.model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=2.0)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)),
                          batch_size=8)


def _masks(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(".mask")}


@pytest.mark.parametrize("callback", ["dynamic", "gradual"])
def test_the_last_epochs_checkpoint_holds_the_final_masks(tmp_path, callback):
    """The masks the fit returns are the ones in last.ckpt: a run killed after it resumes (its fit
    already complete) to the same model. Before: the final re-mask came after the checkpoint."""
    from unipts.lightning.callbacks import DynamicSparsity, GradualPruning

    torch.manual_seed(0)
    # gradual: one step per fit, so the schedule reaches its end only at the fit's last step
    sparsity = DynamicSparsity(interval=1) if callback == "dynamic" else GradualPruning(0.75, rule="uniform", interval=100)
    student = _Student()
    trainer = pl.Trainer(max_epochs=2 if callback == "dynamic" else 1, limit_train_batches=None if callback == "dynamic" else 1,
                         accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[sparsity, ModelCheckpoint(tmp_path, filename="last", save_on_train_epoch_end=True)])
    trainer.fit(student)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    final = _masks({f"model.{k}": v for k, v in student.model.state_dict().items()})
    assert final.keys() == _masks(saved["state_dict"]).keys() and final
    for key, mask in final.items():
        assert torch.equal(saved["state_dict"][key], mask), key
    if callback == "gradual":
        assert float(sum((m == 0).sum() for m in final.values())) > 0  # the schedule's end was reached


# -- a second sweep into a used folder ----------------------------------------------------------------

def test_a_used_sweep_folder_is_named_and_an_empty_one_is_not(tmp_path):
    from unipts.cli._hooks import used_sweep_dir

    assert used_sweep_dir(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert used_sweep_dir(tmp_path / "empty") is None
    sweep = tmp_path / "sweep"
    for job in range(6):
        (sweep / str(job)).mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert used_sweep_dir(sweep) == f"{sweep} already holds an earlier sweep (0, 1, 2, 3 and 3 more)"
    assert used_sweep_dir(sweep / "0") is None
    (sweep / "0" / "notes.txt").write_text("")
    assert used_sweep_dir(sweep / "0") == f"{sweep / '0'} already holds other files (notes.txt)"


# -- signals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_work_at_once_and_a_staged_write_leaves_nothing(tmp_path, signum, ctrl_c):
    from unipts.atomic import staged
    from unipts.signals import Stopped, exit_status, received, stop_on_signals

    with pytest.raises(Stopped) as err:
        with stop_on_signals(), staged(tmp_path, ["model.pt", "model.onnx"]) as tmp:
            tmp["model.pt"].write_bytes(b"half")
            os.kill(os.getpid(), signum)
            pytest.fail("the signal did not stop the work")
    assert err.value.signum == signum == received()
    assert isinstance(err.value, KeyboardInterrupt)  # Lightning tears its fit down; `except Exception` lets it pass
    assert list(tmp_path.iterdir()) == []  # no temporary file, no half of a pair
    assert exit_status(signum) == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert signal.getsignal(signum) is signal.SIG_IGN  # stopped: on its way out, a further signal is ignored
    signal.signal(signum, signal.default_int_handler)
    with stop_on_signals():
        pass
    assert signal.getsignal(signum) is signal.default_int_handler  # not stopped: the earlier handler is back


def _cfg(run_dir: Path, task: str = "prune") -> SimpleNamespace:
    return SimpleNamespace(task=task, paths=SimpleNamespace(output_dir=str(run_dir)))


def _command(line: str, after: str) -> list[str]:
    return shlex.split(line.split(after, 1)[1])


def test_the_stop_line_holds_the_shell_quoted_command_that_continues_the_run(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from unipts.cli._entry import stopped_line

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))  # no command-line overrides

    run_dir = tmp_path / "my runs" / "a'b"  # a space and a quote must survive a copy-paste into a shell
    line = stopped_line(_cfg(run_dir), signal.SIGINT)
    assert line == (f"{run_dir}: stopped by SIGINT before it started; start it again with: "
                    f"unipts-prune {shlex.quote(f'hydra.run.dir={run_dir}')}")
    _recorded(run_dir)
    line = stopped_line(_cfg(run_dir), signal.SIGINT)
    assert line.startswith(f"{run_dir}: stopped by SIGINT before its first checkpoint; start it over in the same "
                           "directory with: ")
    assert _command(line, "with: ") == ["unipts-prune", "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    line = stopped_line(_cfg(run_dir), signal.SIGTERM)
    assert line.startswith(f"{run_dir}: stopped by SIGTERM; {run_dir / 'checkpoints' / 'last.ckpt'} holds the last "
                           "complete epoch; resume with: ")
    assert _command(line, "resume with: ") == ["unipts-prune", "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    line = stopped_line(_cfg(tmp_path / "e x", "export"), signal.SIGTERM)
    assert line == f"{tmp_path / 'e x'}: stopped by SIGTERM; nothing was left half-written; run it again with: unipts-export"


def test_a_signal_inside_a_held_block_stops_the_work_once_the_block_is_done(tmp_path):
    """An epoch's checkpoint and the last.ckpt a resume reads, an export's files: written whole."""
    from unipts.signals import Stopped, received, signals_held, stop_on_signals

    done = []
    with pytest.raises(Stopped) as err:
        with stop_on_signals():
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the rest of the block")
            pytest.fail("the held signal was not acted on")
    assert done == ["the rest of the block"] and err.value.signum == signal.SIGTERM == received()


def test_another_networks_weights_are_one_line_before_lightning_loads_them():
    from unipts.lightning.module import check_fits

    own = {"a.weight": torch.zeros(4, 2), "b.weight": torch.zeros(3)}
    check_fits({"a.weight": torch.ones(4, 2), "b.weight": torch.ones(3)}, own, "x.ckpt")
    with pytest.raises(UniptsError) as err:
        check_fits({"a.weight": torch.ones(8, 2), "c.bias": torch.ones(1)}, own, "x.ckpt")
    assert str(err.value) == ("ckpt_path: x.ckpt holds another network's weights (a.weight: (8, 2) there, (4, 2) here; "
                              "it lacks b.weight; it has c.bias besides); resume with the model and data settings of "
                              "the run that wrote it")


def test_an_unwritable_cache_is_refused_before_the_dense_model_is_trained(tmp_path, monkeypatch):
    """Issue 27: with UNIPTS_CACHE_DIR under /proc the dense model was pre-trained, then not saved."""
    from unipts.pipeline import dense

    trained = []
    monkeypatch.setattr(dense, "pretrain_on_the_fly", lambda *a: trained.append(1))
    monkeypatch.setattr(dense, "build_network", lambda *a: nn.Linear(1, 1))
    spec = SimpleNamespace(dense_ckpt=None, paths=SimpleNamespace(cache_dir="/proc/unipts-cache"),
                           model=SimpleNamespace(name="m"), data=SimpleNamespace(name="d"))
    monkeypatch.setattr(dense, "_cache_key", lambda spec: "k")
    with pytest.raises(UniptsError, match=r"^paths.cache_dir: cannot write in /proc \(.*\), so /proc/unipts-cache cannot "
                                          r"be created, and the pre-trained dense model is kept there; set UNIPTS_CACHE_DIR"):
        dense.obtain_dense(spec, None)
    assert trained == []


@pytest.mark.parametrize("damage,problem", [
    (lambda p: p.write_text("[1, 2"), "is not JSON"),
    (lambda p: p.write_text('{"a": 1}'), "holds no list of image indices"),
    (lambda p: os.mkfifo(p), "is a FIFO, not a regular file"),
], ids=["truncated", "not a list", "fifo"])
def test_a_damaged_calibration_record_is_refused_before_the_resume(tmp_path, damage, problem):
    """Issue 27: a truncated calib_indices.json was a JSON traceback after the dense model."""
    from unipts.runs.identity import identity_record

    run_dir = _recorded(tmp_path / "run")
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "optimizer_states": [], "loops": {}, "epoch": 0,
                "unipts_identity": identity_record(CONFIG)}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "calib_indices.json").write_text("[3, 1, 2]")
    assert check_start(_spec(run_dir, "last"), trains=True) == run_dir / "checkpoints" / "last.ckpt"
    (run_dir / "calib_indices.json").unlink()
    damage(run_dir / "calib_indices.json")
    with pytest.raises(UniptsError, match=rf"^ckpt_path: {run_dir / 'calib_indices.json'} {problem}.*; it records "
                                          r"the run's calibration subset: delete it and the resume draws"):
        check_start(_spec(run_dir, "last"), trains=True)


@pytest.mark.parametrize("task", ["eval", "export"])
def test_an_evaluation_or_export_never_writes_into_a_directory_holding_results(tmp_path, task):
    """Issue 27: unipts-eval with hydra.run.dir at a finished prune run replaced its summary.json."""
    from omegaconf import OmegaConf

    from unipts.cli._hooks import check_output_dir

    def cfg(out):
        return OmegaConf.create({"task": task, "paths": {"output_dir": str(out)}})

    check_output_dir(cfg(tmp_path / "new"))
    run_dir = _recorded(tmp_path / "run", "summary.json")
    with pytest.raises(UniptsError, match=rf"^hydra.run.dir: {run_dir} already holds results \(summary.json, "
                                          rf"\.unipts/\), which unipts-{task} would overwrite; leave hydra.run.dir out"):
        check_output_dir(cfg(run_dir))
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "export.json").write_text("{}")
    with pytest.raises(UniptsError, match=r"already holds results \(export.json\)"):
        check_output_dir(cfg(exported))
    check_output_dir(OmegaConf.create({"task": "prune", "paths": {"output_dir": str(run_dir)}}))  # its start decides


def test_a_second_signal_does_not_interrupt_the_stop(ctrl_c):
    """Issue 27: a second Ctrl-C 10 ms after the first cut the stop's report short (the wrong line)."""
    from unipts.signals import Stopped, received, stop_on_signals

    cleaned = []
    with pytest.raises(Stopped) as err:
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # while the first one unwinds
                cleaned.append("cleanup ran to its end")
    assert cleaned == ["cleanup ran to its end"] and err.value.signum == signal.SIGINT == received()


def test_a_signal_ignored_by_whoever_started_the_command_stays_ignored():
    """A background job of a shell ignores Ctrl-C (SIGINT); as Python itself, the command keeps it so."""
    from unipts.signals import stop_on_signals

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN  # the other one is handled
