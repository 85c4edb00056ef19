"""The console of the entry points: third-party noise silenced where it is emitted, log lines kept
out of a live progress bar's line, the end-of-run block, and torch's CPU thread count.

No Lightning or Hydra here: the search callback and the entry points both use it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("unipts")

#: Warnings the project knows to be noise, by message (and category): silenced one by one, never
#: a whole category or module, so a new warning still shows.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6 builds torch's deprecated LeafSpec in every training step
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # a resumed run logs into its own directory: the project kept the old rows as csv/metrics.<n>.csv
    (r"Experiment logs directory .* exists and is not empty", UserWarning),
    # and writes checkpoints where the interrupted run left its own
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
)

#: Lightning's informational lines ("GPU available: ...", "TPU available: ...", the litlogger and
#: litmodels tips, "Trainer.fit stopped: max_epochs reached", "Loading train_dataloader to estimate
#: ...") all go through these loggers; their warnings still show.
CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

#: The default never takes more threads than this (not measured beyond 2 cores: a bigger node's
#: best count is for ``runtime.threads`` to set).
MAX_DEFAULT_THREADS = 8


def quiet_third_party(verbose: bool = False) -> None:
    """Silence the known third-party noise (``runtime.verbose=true`` keeps it)."""
    if verbose:
        return
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def third_party_quieted(verbose: bool = False) -> Iterator[None]:
    """:func:`quiet_third_party` while inside only: a library call (:func:`unipts.prune`) leaves
    its caller's logger levels and warning filters as they were."""
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    with warnings.catch_warnings():
        quiet_third_party()
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity: taskset, cgroup cpusets), hyper-threads counted."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def physical_cores_available() -> int:
    """Physical cores among the CPUs this process may run on (its affinity, which follows taskset and
    cgroup cpusets): hyper-threads of one core count once."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package, core = ((topology / name).read_text().strip() for name in ("physical_package_id", "core_id"))
            cores.add((package, core))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """Half the physical cores available, at least 1, at most :data:`MAX_DEFAULT_THREADS`: on a
    shared machine, threads spinning against other processes' work cost far more than the
    threads left idle (BENCHMARKS.md: 2 threads on a loaded 2-core machine, a train step 7x
    slower than 1 thread); a machine of your own can take ``runtime.threads=<its cores>``."""
    return max(1, min(physical_cores_available() // 2, MAX_DEFAULT_THREADS))


def set_threads(setting: int | str | None) -> int | None:
    """Give torch ``setting`` CPU threads (``auto``: :func:`default_threads`, unless OMP_NUM_THREADS
    is set, which torch already follows). Returns the count set, or None where torch's own stands."""
    if setting in (None, "auto") and os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = default_threads() if setting in (None, "auto") else int(setting)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the first inter-op parallel work; harmless to keep
        pass
    return threads


def interactive() -> bool:
    """Whether the console is a terminal, where a live progress bar can redraw its line (in a
    redirected log it cannot: there, progress is one log line per epoch or generation)."""
    from rich.console import Console

    return Console(stderr=False).is_terminal


@contextmanager
def logs_above_progress() -> Iterator[None]:
    """While a rich progress display is live (it redirects ``sys.stdout``/``sys.stderr`` to print
    above the bar), point the console log handlers at those redirected streams, so a log line
    never lands in the bar's own line."""
    swapped = []
    redirect = {sys.__stdout__: sys.stdout, sys.__stderr__: sys.stderr}
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and redirect.get(handler.stream) not in (None, handler.stream):
            swapped.append((handler, handler.setStream(redirect[handler.stream])))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)


def report(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """The end-of-run block: a title and aligned ``label  value`` rows, one log record (so the log
    file has it as the console shows it)."""
    width = max(len(label) for label, _ in rows)
    lines = [f"-- {title} " + "-" * max(3, 60 - len(title))]
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    log.info("%s", "\n".join(lines))


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def apply_runtime(runtime) -> None:
    """The run spec's ``runtime`` section (checked where it is defined): ``verbose`` and ``threads``."""
    quiet_third_party(bool(runtime.verbose))
    chosen = set_threads(runtime.threads)
    if chosen is not None:
        log.debug("runtime: torch uses %d CPU threads (runtime.threads=%s)", chosen, runtime.threads)


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A live bar of ``total`` steps named ``label`` in a terminal (when ``enabled``), log lines
    printing above it; yields ``advance(description="")``, one step done. Where no bar can draw, it
    does nothing: the caller's log lines tell the progress there."""
    if not (enabled and interactive()):
        yield lambda description="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), transient=True)
    task = bar.add_task("", total=total)
    bar.start()
    try:
        with logs_above_progress():
            yield lambda description="": bar.update(task, advance=1, description=description)
    finally:
        bar.stop()


def with_progress(items, description: str, total: int | None = None):
    """``items``, drawn with a progress bar in a terminal; as they are elsewhere."""
    if not interactive():
        return items
    from rich.progress import track

    return track(items, description=description, total=total, transient=True)


BROKEN_PIPE_STATUS = 128 + 13  # the shell's status for a writer ended by SIGPIPE


def quiet_broken_pipe(main):
    """A reader that stops early (``unipts-prune --help | head -1``) ends the command quietly, with
    the status of a process ended by SIGPIPE, not a BrokenPipeError traceback. (Python ignores
    SIGPIPE, so the write fails instead; the flush at exit would fail again: stdout is pointed at
    /dev/null first.)"""
    import functools

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(BROKEN_PIPE_STATUS)

    return wrapper


def stopped_before_the_run(main):
    """SIGINT or SIGTERM while Hydra composes the configuration, before the entry point's own
    handling (:func:`unipts.cli._entry.reports_errors`) starts: one line, the signal's status, not
    a KeyboardInterrupt traceback (nothing has been written yet)."""
    import functools

    from .signals import Stopped, exit_status, name, stop_on_signals

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            with stop_on_signals():
                return main(*args, **kwargs)
        except Stopped as exc:
            print(f"error: stopped by {name(exc.signum)} before the run started; nothing was written: run the "
                  "command again", file=sys.stderr, flush=True)
            sys.exit(exit_status(exc.signum))

    return wrapper


def verbose_flag(main):
    """Let ``-v``/``--verbose`` on the command line stand for ``runtime.verbose=true`` (Hydra has no
    such flag). Wraps a ``hydra.main`` function; the rewritten ``sys.argv`` is also what Lightning
    re-runs for each extra DDP process. (Every Hydra entry point wears it, so it also makes them
    :func:`quiet_broken_pipe` and :func:`stopped_before_the_run`.)"""
    import functools

    @functools.wraps(main)
    @quiet_broken_pipe
    @stopped_before_the_run
    def wrapper(*args, **kwargs):
        sys.argv[1:] = ["runtime.verbose=true" if arg in ("-v", "--verbose") else arg for arg in sys.argv[1:]]
        return main(*args, **kwargs)

    return wrapper
