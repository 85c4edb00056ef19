"""Collect ``summary.json`` files (a sweep, a benchmark grid) into a CSV and a markdown table, and
name the jobs that have none: failed (their ``failure.json``), unreadable, unfinished, or never run
(a sweep's ``multirun.yaml`` says which jobs it set out to run). Only regular files are read, at
most 16 MiB each: a FIFO or a device in a file's place is named, never waited on."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .common import UniptsError
from .atomic import write_text_atomic
from .console import quiet_broken_pipe
from .runs.jobs import FAILURE_FILE, describe, read_failure
from .safe_read import UnreadableFile, read_regular
from .runs.sweep import MULTIRUN_FILE, UnknownJobs, read_sweep

COLUMNS = ["method", "model", "data", "allocation", "objective", "masks", "pattern", "target_sparsity",
           "achieved_sparsity", "calib_size", "seed", "eval_split", "top1", "top5", "dense_top1", "search_s",
           "search_forward_images", "finetune_s", "total_s", "overrides", "run_dir"]


def find_summaries(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    return sorted(root.rglob("summary.json"))


class UnreadableSummary(ValueError):
    pass


def row(summary_path: Path, root: Path) -> dict:
    try:
        s = json.loads(read_regular(summary_path))
        overrides = _overrides(summary_path.parent)
    except UnreadableFile as exc:
        raise UnreadableSummary(str(exc)) from exc
    except ValueError as exc:  # not JSON, not UTF-8
        raise UnreadableSummary(f"{summary_path.name} is unreadable ({exc})") from exc
    if not isinstance(s, dict):
        raise UnreadableSummary(f"{summary_path.name} holds no summary (a JSON {type(s).__name__})")
    wall = s.get("wall_s") or {}
    out = {k: s.get(k) for k in COLUMNS}
    out["pattern"] = ((s.get("config") or {}).get("sparsity") or {}).get("pattern")
    total = wall.get("total")
    if total is not None and wall.get("earlier_sessions"):  # a resumed run cost its earlier sessions too
        total += wall["earlier_sessions"]
    out.update(search_s=wall.get("search"), finetune_s=wall.get("finetune"), total_s=total,
               overrides=overrides, run_dir=str(summary_path.parent.relative_to(root)) or ".")
    return out


def _overrides(run_dir: Path) -> str:
    """The job's command-line overrides (Hydra's record), which tell the runs of a sweep apart;
    an unreadable record is :class:`~unipts.safe_read.UnreadableFile` (its row could not be told
    from its neighbours')."""
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    try:
        overrides = yaml.safe_load(read_regular(path)) or []
    except yaml.YAMLError as exc:
        raise UnreadableFile(f".hydra/overrides.yaml is not a YAML file ({str(exc).splitlines()[0]})") from exc
    if not isinstance(overrides, list):
        raise UnreadableFile(".hydra/overrides.yaml holds no list of overrides")
    hidden = ("hydra.", "trainer.enable_progress_bar")
    return " ".join(str(o) for o in overrides if not str(o).startswith(hidden))


def _job_name(run_dir: Path, root: Path) -> str:
    return str(run_dir.relative_to(root)) or "."


def _sweep_problems(root: Path, found: set[Path]) -> tuple[dict[Path, str], list[str]]:
    """One line per job a sweep under ``root`` set out to run and that left nothing in ``found``
    (the job folders holding a summary or a failure record), and per sweep whose record is
    unreadable, keyed by job folder (the sweep folder where no job can be named); and a note per
    sweep whose record does not fix its jobs (nothing is wrong, but nothing could be checked)."""
    problems, notes = {}, []
    for multirun in sorted(root.rglob(MULTIRUN_FILE)):
        sweep_dir = multirun.parent
        try:
            sweep = read_sweep(multirun)
        except UnreadableFile as exc:
            problems[sweep_dir] = describe({"job": _job_name(sweep_dir, root), "error": f"{exc}: which jobs the "
                                            "sweep set out to run cannot be told, so jobs that never ran go unnamed"})
            continue
        except UnknownJobs as exc:
            notes.append(f"sweep {sweep_dir}: {exc}; only the jobs that started can be named")
            continue
        for job in sweep.jobs:
            if job.dir is not None and job.dir not in found:
                problems[job.dir] = describe({"job": _job_name(job.dir, root), "overrides": job.overrides,
                                              "error": _unfinished(job.dir, sweep.command(job))})
        # where a job's folder name is not known (a custom hydra.sweep.subdir), the folders are counted
        unplaced = any(job.dir is None for job in sweep.jobs)
        started = {d for d in found | _job_dirs(sweep_dir) if sweep_dir in d.parents}
        if unplaced and len(started) < len(sweep.jobs):
            missing = len(sweep.jobs) - len(started)
            problems[sweep_dir] = describe({"job": _job_name(sweep_dir, root), "error": f"{len(sweep.jobs)} jobs in "
                                            f"its {MULTIRUN_FILE}, {len(started)} job folders: {missing} never ran "
                                            "(hydra.sweep.subdir is not the job number, so which cannot be told)"})
    return problems, notes


def _job_dirs(root: Path) -> set[Path]:
    """The folders under ``root`` where a Hydra job started (Hydra wrote its ``.hydra/``)."""
    return {hydra_dir.parent for hydra_dir in root.rglob(".hydra")}


def _unfinished(job_dir: Path, command: str | None) -> str:
    """Why a job folder holds no result: the job never started, or did not finish."""
    if not job_dir.exists():
        alone = f"; run it alone with: {command}" if command else ""
        return f"never ran (no folder {job_dir.name}/): the sweep stopped before it, or has not reached it yet{alone}"
    return "no summary.json: the job did not finish (stopped, killed or running)"


@dataclass
class Collected:
    rows: list[dict]     # one per readable summary
    failures: list[str]  # one line per job without one, and per unreadable sweep record: exit status 1
    notes: list[str]     # what could not be checked: a sweep whose jobs are chosen as it runs


def reconcile(root: str | Path) -> Collected:
    """The rows of the readable summaries under ``root``, and one line per job without one: its
    recorded failure, an unreadable summary, a job a sweep's record expects but that never ran or
    did not finish, or a sweep whose record is unreadable."""
    root = Path(root)
    rows, failures = [], {}  # failures: job directory -> line
    summaries = find_summaries(root)
    for path in summaries:
        try:
            rows.append(row(path, root))
        except UnreadableSummary as exc:
            failures[path.parent] = describe({"job": _job_name(path.parent, root), "error": str(exc)})
    done = {path.parent for path in summaries}
    for path in root.rglob(FAILURE_FILE):
        if path.parent not in done:
            failures[path.parent] = describe(read_failure(path))  # a FIFO in its place is named, not waited on
    expected, notes = _sweep_problems(root, done | failures.keys())
    failures.update({d: line for d, line in expected.items() if d not in failures})
    for job_dir in _job_dirs(root):  # the job folders of a sweep whose record did not list them
        is_job = (job_dir.parent / MULTIRUN_FILE).exists()
        if is_job and job_dir not in done | failures.keys():
            failures[job_dir] = describe({"job": _job_name(job_dir, root), "error": _unfinished(job_dir, None)})
    rows.sort(key=lambda r: (str(r["model"]), str(r["method"]), str(r["allocation"]),
                             _number(r["target_sparsity"]), _number(r["seed"])))
    by_job = sorted(failures, key=lambda d: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in d.parts])  # job 2 before job 10
    return Collected(rows, [failures[d] for d in by_job], notes)


def collect_with_failures(root: str | Path) -> tuple[list[dict], list[str]]:
    """:func:`reconcile`'s rows and failure lines."""
    collected = reconcile(root)
    return collected.rows, collected.failures


def _number(value) -> float:
    return value if isinstance(value, (int, float)) else 0


def collect(root: str | Path) -> list[dict]:
    """The rows of the readable summaries under ``root``."""
    return collect_with_failures(root)[0]


def to_csv(rows: Iterable[dict], path: str | Path) -> None:
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def to_markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or [c for c in COLUMNS if c not in ("run_dir", "overrides")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@quiet_broken_pipe
def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="unipts-collect", description=__doc__)
    parser.add_argument("sweep_dir", help="a folder holding run directories with summary.json; jobs without "
                        "one (failed, unreadable, unfinished, or listed by a sweep's multirun.yaml but never run) "
                        "are named on stderr (exit status 1)")
    parser.add_argument("--csv", help="CSV file to write (default: <sweep_dir>/results.csv)")
    args = parser.parse_args(argv)

    def refuse(line: str) -> None:
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)

    try:
        collected = reconcile(args.sweep_dir)
        rows, failures = collected.rows, collected.failures
        if rows:
            to_csv(rows, args.csv or Path(args.sweep_dir) / "results.csv")
    except FileNotFoundError as exc:
        refuse(f"sweep_dir: {exc}")
    except UniptsError as exc:  # the CSV could not be written
        refuse(f"--csv: {exc}")
    if rows:
        print(to_markdown(rows), end="")
    for line in collected.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if not rows and not failures:
        refuse(f"sweep_dir: no summary.json under {args.sweep_dir}")
    if failures:  # the table holds what finished; the status says that something did not
        sys.exit(1)


if __name__ == "__main__":
    main()
