"""What a user sees: per-command --help (fast, every config group that applies), and a console
with only the project's own lines."""

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from unipts.cli._entry import CONFIG_DIR

from .conftest import FAST, run_cli

# The config groups each command composes (its primary config's defaults list).
GROUPS = {
    "prune": ["allocation", "data", "experiment", "logger", "method", "model", "objective", "paths", "runtime",
              "trainer"],
    "eval": ["data", "experiment", "logger", "model", "paths", "runtime", "trainer"],
    "export": ["data", "model", "paths", "runtime"],
    "pretrain": ["data", "experiment", "logger", "model", "paths", "runtime", "trainer"],
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in Path(CONFIG_DIR, group).glob("*.yaml"))


def _help(command: str, env: dict) -> tuple[str, float]:
    """The command's --help text, and the CPU seconds it took (user + system: unlike wall time,
    not stretched by other work on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", f"unipts.cli.{command}", "--help"], env=env, capture_output=True,
                          text=True, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize("command", sorted(GROUPS))
def test_help_says_what_the_command_does_and_lists_its_groups(command, cli_env):
    text, _ = _help(command, cli_env)
    assert text.startswith(f"unipts-{command}:")  # what the command does, first
    assert "Example" in text and "Main keys" in text
    listed = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in text.splitlines()
              if line.split(":")[0] in _all_groups()}
    assert sorted(listed) == GROUPS[command]  # every group that applies, and none that does not
    for group, options in listed.items():
        assert options == ", ".join(_options(group)), group  # a hand-written list has not gone stale


def _all_groups() -> set[str]:
    return {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra"}


def test_groups_table_covers_every_config_group():
    assert set(GROUPS["prune"]) == _all_groups()


def test_help_is_fast_and_imports_no_torch(cli_env):
    assert _help("prune", cli_env)[1] <= 3.0
    probe = ("import sys\nfrom unipts.cli import prune\nsys.argv = ['unipts-prune', '--help']\n"
             "try:\n    prune.main()\nfinally:\n    print('torch imported:', 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=cli_env, capture_output=True, text=True, timeout=60)
    assert "torch imported: False" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


# The project's log lines (Hydra's format, loggers under `unipts`) and the rows of its end-of-run block.
PROJECT_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[unipts(\.\w+)*\]\[(INFO|WARNING)\] - \S")
BLOCK_ROW = re.compile(r"^  [a-z][a-z0-9 .-]*[a-z0-9]  +\S")


def _foreign_lines(proc) -> list[str]:
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.strip() and not PROJECT_LINE.match(line) and not BLOCK_ROW.match(line)]


@pytest.mark.slow
def test_a_run_prints_only_the_projects_lines(tmp_path, cli_env):
    # every warning shows, as for a user (the suite's environment silences them), and the dense
    # model is pre-trained afresh; all loggers, CSV, TensorBoard and W&B (offline)
    env = {k: v for k, v in cli_env.items() if k != "PYTHONWARNINGS"}
    env["UNIPTS_CACHE_DIR"] = str(tmp_path / "cache")
    run_dir = tmp_path / "run"
    first = run_cli("prune", run_dir, *FAST, "logger=many", env=env)
    assert _foreign_lines(first) == []
    out = first.stdout + first.stderr
    assert "pretrain: epoch 2/2" in out and "fine-tune: epoch 2/2" in out  # progress in a redirected log
    assert "achieved sparsity" in out and "outputs" in out
    for result in ("summary.json", "checkpoints/final.ckpt"):  # a finished run is not resumed: as if killed before
        (run_dir / result).unlink()
    resumed = run_cli("prune", run_dir, *FAST, "logger=many", "ckpt_path=last", env=env)  # Lightning warns on resume
    assert _foreign_lines(resumed) == []
    final = run_dir / "checkpoints" / "final.ckpt"
    evaluated = run_cli("eval", tmp_path / "eval", f"checkpoint={final}", env=env)
    exported = run_cli("export", tmp_path / "export", f"checkpoint={final}", env=env)
    assert _foreign_lines(evaluated) == [] and _foreign_lines(exported) == []
    assert re.search(r"^  model.onnx +matches PyTorch$", exported.stdout + exported.stderr, re.M)
    verbose = run_cli("prune", tmp_path / "verbose", *FAST, "method=magnitude", "-v", env=env)  # runtime.verbose=true
    assert any("GPU available" in line for line in _foreign_lines(verbose))  # the switch brings them back


def test_layer_sparsity_plot_labels_every_searched_layer_and_shows_dense_ones(tmp_path):
    from unipts.plots import layer_sparsity_figure, plot_layer_sparsity

    tables = {"searched": {"conv1": 0.0, "layer1": 0.85, "fc": 0.97},
              "uniform": {"conv1": 0.9, "layer1": 0.9, "fc": 0.9}}
    ax = layer_sparsity_figure(tables, 0.9).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.85", "0.97"]
    dense_bar = ax.containers[0][0]
    assert dense_bar.get_height() == 0.0 and dense_bar.get_linewidth() > 0 and ax.get_ylim()[0] < 0  # drawn as a line
    assert plot_layer_sparsity(tmp_path / "p.png", tables, 0.9).stat().st_size > 0


@pytest.mark.parametrize("cores,threads", [(1, 1), (2, 1), (16, 8), (64, 8)])
def test_default_threads_leave_room_on_a_shared_machine(cores, threads, monkeypatch):
    from unipts import console

    monkeypatch.setattr(console, "physical_cores_available", lambda: cores)
    assert console.default_threads() == threads


def test_threads_setting(monkeypatch):
    import torch

    from unipts import UniptsError
    from unipts.console import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads("auto") is None  # the environment's choice stands
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    from unipts.spec.sections import Runtime

    with pytest.raises(UniptsError, match="runtime.threads"):
        Runtime(threads=0)


def test_log_lines_go_above_a_live_progress_bar(monkeypatch):
    import io
    import logging

    from unipts.console import logs_above_progress

    handler = logging.StreamHandler(sys.__stderr__)
    root = logging.getLogger()
    root.addHandler(handler)
    above_bar = io.StringIO()  # what rich puts in sys.stderr while its bar is live
    monkeypatch.setattr(sys, "stderr", above_bar)
    try:
        with logs_above_progress():
            logging.getLogger("unipts.test").warning("generation 1/2")
        assert handler.stream is sys.__stderr__
    finally:
        root.removeHandler(handler)
    assert "generation 1/2" in above_bar.getvalue()


def test_teacher_match_is_zero_kl_and_full_agreement_for_the_distilled_target():
    import torch

    from unipts.lightning.module import objective_temperatures, teacher_match
    from unipts.objectives import BaseDecayedKL

    teacher = torch.randn(16, 10)
    t_teacher, t_student = objective_temperatures(BaseDecayedKL(teacher_temperature=4.0, student_temperature=1.0))
    exact = teacher_match(teacher / 4.0, teacher, t_teacher, t_student)  # what the objective drives the student to
    assert float(exact["train/kl"]) == pytest.approx(0.0, abs=1e-6) and float(exact["train/agreement"]) == 1.0
    flipped = teacher_match(-teacher, teacher, t_teacher, t_student)
    assert float(flipped["train/kl"]) > 0.1 and float(flipped["train/agreement"]) == 0.0


def test_search_generations_are_logged_like_epochs(caplog):
    """About ten progress lines for a search, as for a fine-tune: the first, the last, every few."""
    import logging

    from unipts.lightning.search_callback import _log_generation

    with caplog.at_level(logging.INFO, logger="unipts"):
        for g in range(25):
            _log_generation({"generation": g, "best": 0.5, "mean": 0.4, "best_ever": 0.5, "size": 25,
                             "evaluations": 25 * (g + 1)}, 25)
    logged = [int(r.getMessage().split("generation ")[1].split("/")[0]) for r in caplog.records]
    assert logged == [1, 3, 6, 9, 12, 15, 18, 21, 24, 25]


@pytest.mark.parametrize("module", ["unipts.cli.prune", "unipts.collect"])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path, cli_env, module):
    """Issue 27: ``unipts-prune --help | head -c 1`` ended in a BrokenPipeError traceback."""
    args = ["--help"] if module.endswith("prune") else [str(tmp_path)]
    if module == "unipts.collect":
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "summary.json").write_text('{"task": "prune", "method": "magnitude"}')
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command has written a byte
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + 13 and err == "", err  # the status of a writer ended by SIGPIPE
