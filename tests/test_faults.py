"""Issue 10: no silent mix-ups, no lost files, one clear line for every bad input. Real
subprocesses with tiny settings where the command line is what is tested."""

import hashlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from .conftest import FAST, run_cli


def _errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _refused(proc) -> str:
    """The one error line of a refused command (exit status 2, no traceback)."""
    errors = _errors(proc)
    assert proc.returncode == 2 and len(errors) == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    return errors[0]


def _hashes(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory but its log (each start appends to it), by content."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.suffix != ".log"}


# -- resume with a changed run identity ----------------------------------------------------------

IDENTITY_CHANGES = [
    ("sparsity.target=0.5", "sparsity.target"), ("sparsity.pattern=2:4", "sparsity.pattern"),
    ("method=pot", "method.name"), ("allocation=erk", "allocation.rule"), ("model=resnet20", "model.name"),
    ("data=cifar10", "data.name"), ("calib.size=32", "calib.size"), ("calib.seed=3", "calib.seed"),
    ("seed=1", "seed"), ("objective=kd", "objective.name"), ("finetune.lr=0.5", "finetune.lr"),
    ("finetune.epochs=9", "finetune.epochs"), ("dense_ckpt=/x.pt", "dense_ckpt"), ("eval_split=val", "eval_split"),
]
FREE_CHANGES = ["logger=none", "trainer.enable_progress_bar=false", "data.num_workers=3", "checkpoint.save_top_k=1",
                "paths.cache_dir=/elsewhere", "ckpt_path=last", "trainer.check_val_every_n_epoch=5"]


def _resolved(overrides):
    from .test_config import _compose

    cfg = _compose(overrides)
    with open_dict(cfg):
        cfg.pop("hydra")  # the task never sees it
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("override,key", IDENTITY_CHANGES, ids=[o for o, _ in IDENTITY_CHANGES])
def test_every_identity_key_counts(override, key):
    from unipts.runs.record import differences

    changed = [k for k, _, _ in differences(_resolved([]), _resolved([override]))]
    assert key in changed


def test_keys_that_cannot_change_the_result_may_differ():
    from unipts.runs.record import differences

    assert differences(_resolved([]), _resolved(FREE_CHANGES)) == []


@pytest.mark.slow
def test_resume_with_a_changed_identity_is_refused_and_leaves_the_run_as_it_was(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    base = [*FAST, "finetune.epochs=1", "allocation=uniform"]
    run_cli("prune", run_dir, *base, env=cli_env)
    before = _hashes(run_dir)
    assert {"summary.json", "calib_indices.json", "checkpoints/last.ckpt", "csv/metrics.csv",
            ".hydra/config.yaml", ".unipts/config.json"} <= before.keys()

    proc = run_cli("prune", run_dir, *base, "ckpt_path=last", "sparsity.target=0.5", "seed=4", env=cli_env, check=False)
    line = _refused(proc)
    # allocation.seed follows seed (the search's options are present whatever the allocation)
    assert line.startswith("error: allocation.seed, seed, sparsity.target:")
    assert "sparsity.target: 0.9 in the run, 0.5 now" in line and "seed: 0 in the run, 4 now" in line
    assert _hashes(run_dir) == before

    # method=magnitude has no fine-tune: ckpt_path is refused, not silently ignored
    proc = run_cli("prune", run_dir, *base, "ckpt_path=last", "method=magnitude", env=cli_env, check=False)
    assert _refused(proc).startswith("error: ckpt_path: method=magnitude has no fine-tune to resume")
    assert _hashes(run_dir) == before

    # a new run may not start in a directory that holds one
    proc = run_cli("prune", run_dir, *base, env=cli_env, check=False)
    assert _refused(proc).startswith(f"error: hydra.run.dir: {run_dir} already holds a finished run")
    assert _hashes(run_dir) == before


@pytest.mark.slow
def test_a_pretraining_resume_repeats_its_settings(tmp_path, cli_env):
    """unipts-pretrain keeps the same record: a dense model trained over several sessions cannot
    silently continue with another learning rate or seed."""
    run_dir = tmp_path / "run"
    base = ["data.pretrain.epochs=2", "trainer.enable_progress_bar=false"]
    run_cli("pretrain", run_dir, *base, env=cli_env)
    before = _hashes(run_dir)
    assert {"checkpoints/last.ckpt", "checkpoints/dense.pt", ".unipts/config.json"} <= before.keys()

    proc = run_cli("pretrain", run_dir, *base, "ckpt_path=last", "data.pretrain.lr=0.5", "seed=3", env=cli_env,
                   check=False)
    line = _refused(proc)
    assert line.startswith("error: data.pretrain.lr, seed: differ from the run being resumed")
    assert "data.pretrain.lr: 0.05 in the run, 0.5 now" in line
    assert _hashes(run_dir) == before
    proc = run_cli("pretrain", run_dir, *base, env=cli_env, check=False)
    assert _refused(proc).startswith(f"error: hydra.run.dir: {run_dir} already holds a finished run")
    assert _hashes(run_dir) == before
    run_cli("pretrain", run_dir, *base, "ckpt_path=last", "logger=none", env=cli_env)  # the same run: accepted


# -- a sweep with a bad job ----------------------------------------------------------------------

def test_a_bad_sweep_job_is_named_and_the_others_run(tmp_path, cli_env):
    import csv
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "unipts.cli.prune", "-m", "sparsity.target=0.5,1.5,0.7", f"hydra.sweep.dir={sweep}",
            *FAST, "method=magnitude"]
    proc = subprocess.run(args, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    named = [line for line in proc.stderr.splitlines() if line.startswith("error: sweep: job")]
    assert len(named) == 1 and named[0].startswith("error: sweep: job 1 (sparsity.target=1.5 "), proc.stderr
    assert named[0].endswith("): sparsity.target: 1.5 is outside [0.0, 1.0)")
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "2" / "summary.json").is_file()
    assert not (sweep / "1" / "summary.json").exists()

    # a second sweep into it is refused before it writes anything anywhere (issue 27): before, Hydra
    # rewrote multirun.yaml and every job's refusal became a failure.json in a good job's folder
    every_file = lambda: {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}  # noqa: E731 (logs too)
    before = every_file()
    again = subprocess.run([*args[:4], "sparsity.target=0.6,0.8", *args[5:]], cwd=tmp_path, env=cli_env,
                           capture_output=True, text=True, timeout=600)
    line = _refused(again)
    assert line.startswith(f"error: hydra.sweep.dir: {sweep} already holds an earlier sweep (0, 1, 2, multirun.yaml); "
                           "a sweep never writes into an earlier one: leave hydra.sweep.dir out"), line
    assert every_file() == before and not (sweep / "0" / "failure.json").exists()

    (sweep / "3").mkdir()  # a job whose summary is unreadable keeps neither the table nor collect from working
    (sweep / "3" / "summary.json").write_text('{"task": "prune", "top1": ')
    out = subprocess.run([sys.executable, "-m", "unipts.collect", str(sweep)], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr  # a table, and failures
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert sorted(r["target_sparsity"] for r in rows) == ["0.5", "0.7"]
    failed = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 2, out.stderr
    assert failed[0].startswith("error: job 1 (sparsity.target=1.5 ") and "1.5 is outside" in failed[0]
    assert "3" in failed[1] and "summary.json" in failed[1] and "unreadable" in failed[1]
    assert out.stdout.count("\n") == 2 + 2  # header, rule, the two good rows


# -- one line for every other bad input ----------------------------------------------------------

NON_FINITE = [(["finetune.lr=nan"], "finetune.lr"), (["sparsity.target=inf"], "sparsity.target"),
              (["objective.tau0=-inf"], "objective.tau0"), (["data.test_fraction=nan"], "data.test_fraction")]


@pytest.mark.parametrize("overrides,key", NON_FINITE, ids=[o[0] for o, _ in NON_FINITE])
def test_non_finite_numbers_in_the_config_are_refused(overrides, key):
    from unipts import UniptsError
    from unipts.spec import build_prune_spec

    from .test_config import _compose

    with pytest.raises(UniptsError, match=rf"^{key}: .* is not a finite number$"):
        build_prune_spec(_compose(overrides))


BAD_TABLES = [
    (b"fc: [0.5\nconv: 0.3", "is not a YAML file"),
    (bytes(range(256)) * 4, "is not a YAML file"),
    (b"features.0: 0.5\nfeatures.3: yes\nclassifier: 0.5", "not a number: {'features.3': True}"),
    (b"- 0.5\n- 0.5", "is not a mapping of layer name to sparsity"),
]


@pytest.mark.parametrize("content,what", BAD_TABLES, ids=["broken yaml", "binary", "boolean", "list"])
def test_malformed_allocation_tables_are_named(tmp_path, content, what):
    from unipts.sparse.allocation import read_table

    path = tmp_path / "table.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_table(path)
    assert str(err.value).startswith(f"allocation.path: {path}") and what in str(err.value)


def test_a_layer_at_sparsity_one_is_refused(tmp_path):
    from unipts.sparse import sparsify
    from unipts.sparse.allocation import layer_numels, table

    from .conftest import tiny_net

    net = sparsify(tiny_net())
    names = list(layer_numels(net))
    path = tmp_path / "table.yaml"
    path.write_text("\n".join(f"{n}: {1.0 if i == 0 else 0.5}" for i, n in enumerate(names)))
    with pytest.raises(ValueError, match=rf"sparsities must lie in \[0, 1\).*'{names[0]}': 1.0"):
        table(net, 0.5, path)


# -- non-finite weights --------------------------------------------------------------------------

def test_export_refuses_non_finite_weights_and_eval_warns(tmp_path, cli_env):
    import torch

    from unipts.models import DigitsNet

    state = {k: v.clone() for k, v in DigitsNet(num_classes=10, in_channels=1).state_dict().items()}
    first, second = [k for k in state if k.endswith(".weight")][:2]
    state[first][0].fill_(float("nan"))
    state[second].view(-1)[0] = float("inf")
    path = tmp_path / "broken.pt"
    torch.save(state, path)

    export_dir = tmp_path / "export"
    proc = run_cli("export", export_dir, f"checkpoint={path}", "model=digits_net", "data=digits",
                   env=cli_env, check=False)
    line = _refused(proc)
    assert line.startswith(f"error: checkpoint: {path}: 2 tensor(s) hold NaN or infinity: {first}, {second}")
    assert not [p for p in export_dir.iterdir() if p.is_file() and not p.suffix == ".log"]  # nothing written

    proc = run_cli("eval", tmp_path / "eval", f"checkpoint={path}", "model=digits_net", "data=digits",
                   "trainer.enable_progress_bar=false", env=cli_env)
    assert f"2 tensor(s) hold NaN or infinity: {first}, {second}" in proc.stdout + proc.stderr
    summary = (tmp_path / "eval" / "summary.json").read_text()
    assert "NaN" not in summary and "Infinity" not in summary


# -- ImageFolder splits ---------------------------------------------------------------------------

def _tree(root: Path, classes: dict[str, list[str]]) -> Path:
    from PIL import Image

    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(root / split / name / "0.png")
    return root


@pytest.mark.parametrize("val,what", [
    (["a", "c"], "only in train/: ['b'], only in val/: []"),
    (["a", "B", "c"], "only in train/: ['b'], only in val/: ['B']"),
], ids=["val lacks a class", "a class renamed"])
def test_imagefolder_splits_with_other_classes_are_refused(tmp_path, val, what):
    from unipts import UniptsError
    from unipts.data.datasets import imagefolder

    root = _tree(tmp_path, {"train": ["a", "b", "c"], "val": val})
    with pytest.raises(UniptsError) as err:
        imagefolder(str(root), image_size=4, resize=4)
    assert str(err.value).startswith("data.root: the class folders of") and what in str(err.value)


def test_an_empty_class_folder_is_named(tmp_path):
    from unipts import UniptsError
    from unipts.data.datasets import imagefolder

    root = _tree(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    (root / "train" / "b" / "0.png").unlink()
    (root / "train" / "b" / "notes.txt").write_text("no image here")
    with pytest.raises(UniptsError, match=f"class folder {root / 'train' / 'b'} holds no image file"):
        imagefolder(str(root), image_size=4, resize=4)


def test_cifar10_folder_tree_with_other_classes_is_refused(tmp_path):
    from unipts import UniptsError
    from unipts.data.datasets import cifar10

    root = _tree(tmp_path / "cifar", {"train": ["airplane", "cat"], "test": ["airplane", "dog"]})
    with pytest.raises(UniptsError, match=r"only in train/: \['cat'\], only in test/: \['dog'\]"):
        cifar10(str(root), tmp_path / "data")


# -- SIGTERM (pre-emption) -----------------------------------------------------------------------

def test_sigterm_stops_with_a_resume_line_and_a_requeued_job_continues(tmp_path, cli_env):
    import signal
    import subprocess
    import sys
    import time

    import torch

    from .test_resilience import RESUME

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "unipts.cli.prune", f"hydra.run.dir={run_dir}", *RESUME]
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "epoch000.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert errors[0].startswith(f"error: {run_dir}: stopped by SIGTERM; {run_dir / 'checkpoints' / 'last.ckpt'}")
    assert errors[0].endswith(f"ckpt_path=last hydra.run.dir={run_dir}")
    assert not (run_dir / "summary.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] < 3

    # SLURM reruns the same command in the same directory after a pre-emption: it continues
    requeued = run_cli("prune", run_dir, *RESUME, env={**cli_env, "SLURM_RESTART_COUNT": "1"})
    assert "resume: SLURM requeued this job; continuing from" in requeued.stdout + requeued.stderr
    summary = (run_dir / "summary.json").read_text()
    assert '"resumed_from": "' in summary and "last.ckpt" in summary


# -- files given as ckpt_path --------------------------------------------------------------------

@pytest.mark.parametrize("content,what", [
    (b"", "is not a readable weights-only checkpoint"),
    (b"PK\x03\x04 truncated zip" * 10, "is not a readable weights-only checkpoint"),
    ("plain state_dict", "is not a checkpoint of a fine-tune (it lacks state_dict, optimizer_states, loops, epoch)"),
    ("code", "is not a readable weights-only checkpoint"),
], ids=["empty", "corrupt", "foreign", "pickled code"])
def test_bad_files_as_ckpt_path_are_one_line(tmp_path, content, what):
    import torch

    from unipts import UniptsError
    from unipts.runs.record import check_resumable

    path = tmp_path / "last.ckpt"
    if content == "plain state_dict":
        torch.save({"fc.weight": torch.ones(2)}, path)
    elif content == "code":
        torch.save({"state_dict": {}, "payload": Path}, path)  # a class: refused as data, never imported
    else:
        path.write_bytes(content)
    with pytest.raises(UniptsError) as err:
        check_resumable(path)
    assert str(err.value).startswith(f"ckpt_path: {path}") and what in str(err.value)


def test_a_corrupt_last_ckpt_is_refused_before_any_work(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 100)
    proc = run_cli("prune", run_dir, *FAST, "ckpt_path=last", env=cli_env, check=False)
    assert _refused(proc).startswith(f"error: ckpt_path: {run_dir / 'checkpoints' / 'last.ckpt'} is not a readable")
    assert "dense model" not in proc.stdout  # refused before the dense model was loaded or trained


# -- output folders: misplaced, read-only, full ----------------------------------------------------

def test_a_run_directory_that_is_a_file_is_one_line(tmp_path, cli_env):
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    proc = run_cli("prune", a_file, "method=magnitude", env=cli_env, check=False)
    assert _refused(proc) == f"error: hydra.run.dir: {a_file} is a file, not a folder; give a writable folder"
    proc = run_cli("prune", tmp_path / "run", "method=magnitude", f"paths.output_dir={a_file / 'sub'}", env=cli_env,
                   check=False)
    assert _refused(proc).startswith(f"error: paths.output_dir: {a_file} is a file, so {a_file / 'sub'} cannot be")
    assert a_file.read_text() == "not a folder"


def test_a_read_only_folder_is_named(tmp_path, monkeypatch):
    import errno
    import tempfile

    from unipts.checks import folder_problem

    # root passes every permission check, yet cannot write under /proc: writing is tried (issue 27)
    assert folder_problem(Path("/proc/unipts-run")).startswith("cannot write in /proc (")
    # tests may run as root, for whom every folder is writable: a refused file is what a user would meet
    real = tempfile.TemporaryFile

    def refused(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    assert folder_problem(tmp_path) == f"cannot write in {tmp_path} (Permission denied)"
    assert folder_problem(tmp_path / "a" / "b") == (f"cannot write in {tmp_path} (Permission denied), so "
                                                    f"{tmp_path / 'a' / 'b'} cannot be created")
    before = set(tmp_path.parent.iterdir())
    assert folder_problem(tmp_path.parent) is None
    assert set(tmp_path.parent.iterdir()) == before  # the file tried is gone


def test_a_full_disk_is_one_line_and_leaves_the_earlier_file(tmp_path, monkeypatch):
    import builtins
    import errno
    import json

    import torch

    from unipts import UniptsError
    from unipts.atomic import save_torch_atomic, write_json_atomic

    write_json_atomic(tmp_path / "summary.json", {"ok": 1})
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    import os

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Full(real_open(*a, **k)))
    monkeypatch.setattr(Path, "write_text", lambda self, text: Full(real_open(self, "w")).write(text))
    for write, name in ((lambda p: write_json_atomic(p, {"new": 2}), "summary.json"),
                        (lambda p: save_torch_atomic({"w": torch.ones(3)}, p), "final.ckpt")):
        with pytest.raises(UniptsError) as err:
            write(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: cannot write (No space left on device)")
    monkeypatch.undo()
    assert json.loads((tmp_path / "summary.json").read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


@pytest.mark.parametrize("overrides,key", [
    (["method=unipts", "calib.size=1"], "calib.size"),
    (["method=unipts", "allocation.max_images=1"], "allocation.max_images"),
])
def test_too_few_calibration_images_for_the_search(overrides, key):
    from unipts import UniptsError
    from unipts.spec import build_prune_spec

    from .test_config import _compose

    with pytest.raises(UniptsError, match=rf"^{key}: 1 image is too few for allocation=search"):
        build_prune_spec(_compose(overrides))
    build_prune_spec(_compose([*overrides, "allocation.fitness_on_bn_images=true"]))  # one image can do both


# -- DDP -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_ddp_failure_is_reported_once(tmp_path, cli_env):
    import os
    import subprocess
    import sys

    from .conftest import REPO

    env = {**cli_env, "UNIPTS_TEST_NAN_EPOCH": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    args = [sys.executable, "-m", "tests.helpers.nan_prune", f"hydra.run.dir={tmp_path / 'run'}", "trainer=ddp_cpu",
            "data.pretrain.epochs=2", "finetune.epochs=3", "calib.size=64", "trainer.enable_progress_bar=false",
            "allocation.generations=1", "allocation.population=4", "allocation.parents=2"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert _refused(proc).startswith("error: non-finite loss")
    assert "non-finite loss" not in proc.stdout  # the terminal shows the error line alone
    logs = "".join(p.read_text() for p in (tmp_path / "run").glob("*.log"))
    assert logs.count("non-finite loss") == 1  # the run's log keeps it, from rank 0 only


# -- every entry point: one line, exit status 2 ----------------------------------------------------

@pytest.mark.parametrize("command,override,key", [
    ("pretrain", "ckpt_path={empty}", "ckpt_path"),
    ("eval", "checkpoint={empty}", "checkpoint"),
    ("export", "checkpoint={empty}", "checkpoint"),
    ("eval", "data.test_fraction=nan", "data.test_fraction"),
])
def test_every_entry_point_refuses_in_one_line(tmp_path, cli_env, command, override, key):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    proc = run_cli(command, tmp_path / "run", override.format(empty=empty), "checkpoint=/dev/null"
                   if command == "eval" and "checkpoint" not in override else "seed=0", env=cli_env, check=False)
    line = _refused(proc)
    assert line.startswith(f"error: {key}: ")
    assert not (tmp_path / "run" / "summary.json").exists()
    said = line.removeprefix("error: ")
    assert said not in proc.stdout  # once on the terminal, not echoed by the console log as well
    assert "".join(p.read_text() for p in (tmp_path / "run").glob("*.log")).count(said) == 1  # the run's log


def test_collect_refuses_in_one_line(tmp_path):
    import subprocess
    import sys

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "summary.json").write_text('{"task": "prune", "method": "magnitude"}')
    for args, key in (([str(a_file)], "sweep_dir"), ([str(tmp_path / "sweep"), "--csv", str(a_file / "x.csv")], "--csv")):
        proc = subprocess.run([sys.executable, "-m", "unipts.collect", *args], capture_output=True, text=True)
        assert _refused(proc).startswith(f"error: {key}: ")
