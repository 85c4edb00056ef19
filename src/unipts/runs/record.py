"""A run's recorded identity, so that a resume can never silently mix two configurations.

Hydra rewrites ``<run dir>/.hydra/`` every time a command starts in that directory, before unipts
runs, so it cannot tell what the run was started with. unipts therefore keeps its own record in
``<run dir>/.unipts/``: ``config.json`` (the resolved configuration the run was first started
with) and ``hydra/`` (a copy of ``.hydra/`` as of the last accepted start, put back when a start
is refused, so a refused command leaves the run's recorded config as it was).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..common import UniptsError
from ..atomic import write_json_atomic
from ..safe_read import UnreadableFile, read_regular
from .identity import (  # noqa: F401 (identity, is_free: re-exported)
    FREE_KEYS, changed_settings_error, check_identity, checkpoint_identity, differences, identity, is_free,
)
from .ranks import launched_rank

log = logging.getLogger("unipts")

RECORD_DIR = ".unipts"
IDENTITY_FILE = "config.json"
HYDRA_COPY = "hydra"


# What a finished run leaves, summary.json last: a run directory holding any of them holds results
# that a new run must not overwrite; one holding summary.json has finished.
SUMMARY = "summary.json"
RESULT_FILES = ("checkpoints/final.ckpt", "checkpoints/dense.pt", "export.json", SUMMARY)


class RunFinished(UniptsError):
    """A resume of a run that has already finished: nothing to do and nothing changed. The entry
    points report it in one line and exit with status 0 (a resume-until-done loop, or a SLURM
    requeue of a finished job, then simply stops)."""


def earlier_results(run_dir: Path) -> list[str]:
    """Which of :data:`RESULT_FILES` ``run_dir`` holds (a link or a FIFO in their place counts:
    something is there that a new run would replace)."""
    return [name for name in RESULT_FILES if os.path.lexists(run_dir / name)]


def _identity_file(run_dir: Path) -> Path:
    return run_dir / RECORD_DIR / IDENTITY_FILE


def recorded_config(run_dir: Path) -> dict | None:
    path = _identity_file(run_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UniptsError(f"{path}: the run's recorded configuration is unreadable ({exc}); "
                          "it cannot be resumed safely: start a new run") from exc


def resume_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``ckpt_path=PATH``, or ``ckpt_path=last`` for this run
    directory's ``checkpoints/last.ckpt``."""
    if ckpt_path is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        # Hydra has created hydra.run.dir by now, so a wrong folder and one whose run was stopped before unipts
        # accepted it look alike: the line covers both
        raise UniptsError(f"ckpt_path: no checkpoint at {path} (ckpt_path=last resumes <hydra.run.dir>/checkpoints/"
                          "last.ckpt: give the stopped run's directory as hydra.run.dir; a run stopped before it "
                          "started, with no record in its directory, is started again without ckpt_path)")
    check_resumable(path)
    return path


def check_resumable(path: Path) -> None:
    """A checkpoint Lightning can continue a fit from: read as data (never code), with the model,
    optimizer and loop states a fit saves. Checked before any work, so a corrupt, empty or
    foreign file is one line, not a traceback after the dense model and the search."""
    from ..models import load_checkpoint_object

    obj = load_checkpoint_object(path, "ckpt_path")
    missing = [k for k in ("state_dict", "optimizer_states", "loops", "epoch") if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise UniptsError(f"ckpt_path: {path} is not a checkpoint of a fine-tune (it lacks {', '.join(missing)}); "
                          "give a run's checkpoints/last.ckpt or epochNNN.ckpt (final.ckpt and dense models cannot "
                          "be resumed)")


def _resume_target(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """``ckpt_path``'s checkpoint; without one, a requeued job's own ``last.ckpt`` (the same on
    every rank)."""
    if ckpt_path is not None:
        return resume_path(ckpt_path, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if requeued() and last.is_file() and recorded_config(run_dir) is not None else None


def requeued() -> bool:
    """Whether SLURM restarted this job (pre-emption, a requeue): it then reruns the same command,
    in the same run directory where the submitit launcher is used, and should just continue."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def check_start(spec, trains: bool, refusal: str = "") -> Path | None:
    """Refuse, before any work, a start that would mix two runs or overwrite results; returns the
    checkpoint to resume (None: start from the beginning).

    A resume must repeat the identity of the run it continues (:data:`FREE_KEYS` aside); a new run
    must not start in a directory that already holds one or any results; a finished run is not
    resumed (:class:`RunFinished`); a run that does not train (``trains``: a fine-tune or a
    pre-training; ``refusal``: the setting that says it does not) has no checkpoint to resume. A
    run stopped before its first checkpoint starts over in its own directory on ``ckpt_path=last``,
    so that one command continues a stopped run whatever phase it was stopped in.
    """
    run_dir, ckpt_path = spec.run_dir, spec.ckpt_path
    if launched_rank() != 0:  # extra DDP processes re-run the command rank 0 has already checked
        return _resume_target(ckpt_path, run_dir) if trains else None
    recorded, results = recorded_config(run_dir), earlier_results(run_dir)
    if ckpt_path is None and not requeued() and (recorded is not None or results):
        raise _used_directory(run_dir, results)
    if ckpt_path == "last" and _starts_over(spec, recorded, results):
        return None
    if ckpt_path is not None and not trains:
        raise UniptsError(f"ckpt_path: {refusal} has no fine-tune to resume; run it again without ckpt_path, "
                          "in a new run directory")
    if recorded is not None:  # whatever checkpoint continues it, this directory's run is the one continued
        _check_same_run(recorded, spec.config, run_dir)
    if SUMMARY in results:
        raise _finished(spec, results)
    return _resumed(spec, trains, recorded)


def _starts_over(spec, recorded: dict | None, results: list[str]) -> bool:
    """Whether ``ckpt_path=last`` starts the run in ``spec.run_dir`` over: it was accepted (its
    record is there) but stopped before its first checkpoint, and this command repeats it."""
    run_dir = spec.run_dir
    if recorded is None or _last(run_dir).is_file() or SUMMARY in results:
        return False  # without a record, the missing checkpoint is named (resume_path)
    _check_same_run(recorded, spec.config, run_dir)
    log.info("resume: %s was stopped before its first checkpoint; starting it again from the beginning", run_dir)
    return True


def _finished(spec, results: list[str]) -> RunFinished:
    """The report of a resume of a finished run; a resume with other settings is told so first (the
    identity inside the checkpoint it names, where there is one), as for a run that has not finished."""
    run_dir, ckpt_path = spec.run_dir, spec.ckpt_path
    wanted = _last(run_dir) if ckpt_path in (None, "last") else Path(str(ckpt_path)).expanduser()
    if wanted.is_file():
        _check_carried(wanted, spec.config)
    return RunFinished(f"{run_dir}: the run has finished ({', '.join(results)}); there is nothing to resume and "
                       f"nothing was changed; its results are in {run_dir / SUMMARY}. To run it again, start a new "
                       "run: leave ckpt_path and hydra.run.dir out")


def _resumed(spec, trains: bool, recorded: dict | None) -> Path | None:
    """The checkpoint a resume (or a SLURM requeue) continues from, checked against the run it
    came from; None where a requeued job had none yet."""
    run_dir = spec.run_dir
    resume = _resume_target(spec.ckpt_path, run_dir) if trains else None
    if resume is None:
        if requeued() and recorded is not None:
            log.info("resume: SLURM requeued this job before its first checkpoint; starting it again")
        return None
    if spec.ckpt_path is None:
        log.info("resume: SLURM requeued this job; continuing from %s", resume)
    owner = resume.parent.parent  # <run dir>/checkpoints/<name>.ckpt
    # the identity inside the checkpoint is checked wherever the file lies (copied out of its run, or a
    # run directory that lost .unipts/); the record of the run it came from, where there is one, as well
    carried = _check_carried(resume, spec.config)
    owner_record = recorded if owner == run_dir else recorded_config(owner)
    if owner_record is None and not carried:
        raise UniptsError(f"ckpt_path: {resume} carries no run identity and {owner / RECORD_DIR / IDENTITY_FILE} "
                          "does not exist, so nothing can tell whether this command repeats the run it "
                          "continues; start a new run (leave ckpt_path out)")
    if owner_record is not None:
        _check_same_run(owner_record, spec.config, owner)
    _check_calib_record(owner)
    return resume


CALIB_FILE = "calib_indices.json"  # the calibration subset a fine-tune was given, beside its checkpoints


def _check_calib_record(run_dir: Path) -> None:
    """The resumed run's record of its calibration subset, where there is one, must be readable:
    the resume reuses it (a damaged one was a traceback after the dense model)."""
    path = run_dir / CALIB_FILE
    if not os.path.lexists(path):
        return
    try:
        indices = json.loads(read_regular(path))
        if isinstance(indices, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            return
        problem = "holds no list of image indices"
    except UnreadableFile as exc:
        problem = str(exc).removeprefix(path.name + " ")
    except ValueError as exc:
        problem = f"is not JSON ({exc})"
    raise UniptsError(f"ckpt_path: {path} {problem}; it records the run's calibration subset: delete it and the "
                      "resume draws the subset again from the calib settings (the checkpoint's fingerprint checks "
                      "that it is the same one)")


def _check_carried(checkpoint: Path, config: dict) -> bool:
    """Refuse ``config`` if it is not the run whose identity ``checkpoint`` carries; returns whether
    it carries one."""
    return check_identity(checkpoint_identity(checkpoint), config, f"the checkpoint {checkpoint}")


def _last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def _check_same_run(recorded: dict, config: dict, run_dir: Path) -> None:
    changed = differences(recorded, config)
    if changed:
        raise changed_settings_error(changed, str(run_dir))


def _used_directory(run_dir: Path, results: list[str]) -> UniptsError:
    """The refusal of a new run in ``run_dir``, which holds one (``results``: its result files)."""
    leave_out = "leave hydra.run.dir out to start a new run in a directory of its own"
    if SUMMARY in results:
        return UniptsError(f"hydra.run.dir: {run_dir} already holds a finished run ({', '.join(results)}), whose "
                           f"results are never overwritten; {leave_out}")
    held = f" (it has {', '.join(results)})" if results else ""
    return UniptsError(f"hydra.run.dir: {run_dir} already holds a run{held}; resume it with ckpt_path=last (a run "
                       f"stopped before its first checkpoint starts over), or {leave_out}")


def _hydra_dir() -> Path | None:
    """This job's ``.hydra/`` folder, where Hydra saved the composed config (None without one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is None:
        return None
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir) / hc.output_subdir


def record_start(spec, hydra_job: bool = True) -> None:
    """After an accepted start: the identity (first start only) and, for a Hydra job
    (``hydra_job``; not a Python caller's run), a copy of its ``.hydra/``."""
    run_dir = spec.run_dir
    if launched_rank() != 0:
        return
    if recorded_config(run_dir) is None:
        write_json_atomic(_identity_file(run_dir), spec.config)
    hydra_dir = _hydra_dir() if hydra_job else None
    if hydra_dir is not None and hydra_dir.is_dir():
        copy = run_dir / RECORD_DIR / HYDRA_COPY
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(hydra_dir, copy)


@contextmanager
def keeps_record_on_refusal(run_dir: Path) -> Iterator[None]:
    """Put the run's ``.hydra/`` back as of its last accepted start when the block refuses to start."""
    try:
        yield
    except UniptsError:
        copy, hydra_dir = run_dir / RECORD_DIR / HYDRA_COPY, _hydra_dir()
        if launched_rank() == 0 and hydra_dir is not None and copy.is_dir():
            shutil.copytree(copy, hydra_dir, dirs_exist_ok=True)
        raise


def tidy_for_resume(run_dir: Path) -> None:
    """Before a resumed fit: the temporary files a killed run left among its checkpoints go, and
    Lightning's CSV logger, which starts ``metrics.csv`` afresh, finds the interrupted run's rows
    kept as ``metrics.<n>.csv`` beside it."""
    from ..atomic import remove_leftovers

    current = run_dir / "csv" / "metrics.csv"
    if current.is_file():
        n = len(list(current.parent.glob("metrics.*.csv")))
        current.rename(current.with_name(f"metrics.{n}.csv"))
    remove_leftovers(run_dir / "checkpoints")
