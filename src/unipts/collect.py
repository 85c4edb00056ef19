"""Collect ``summary.json`` files (a sweep, a benchmark grid) into a CSV and a markdown table, and
name the jobs that have none: failed (their ``failure.json``), unreadable or unfinished."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from . import UniptsError
from .atomic import write_text_atomic
from .jobs import FAILURE_FILE, describe, read_failure

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
        s = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise UnreadableSummary(f"{summary_path.name} is unreadable ({exc})") from exc
    if not isinstance(s, dict):
        raise UnreadableSummary(f"{summary_path.name} holds no summary (a JSON {type(s).__name__})")
    wall = s.get("wall_s") or {}
    out = {k: s.get(k) for k in COLUMNS}
    out["pattern"] = ((s.get("config") or {}).get("sparsity") or {}).get("pattern")
    out.update(search_s=wall.get("search"), finetune_s=wall.get("finetune"), total_s=wall.get("total"),
               overrides=_overrides(summary_path.parent), run_dir=str(summary_path.parent.relative_to(root)) or ".")
    return out


def _overrides(run_dir: Path) -> str:
    """The job's command-line overrides (Hydra's record), which tell the runs of a sweep apart."""
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    hidden = ("hydra.", "trainer.enable_progress_bar")
    return " ".join(o for o in yaml.safe_load(path.read_text()) or [] if not o.startswith(hidden))


def _job_name(run_dir: Path, root: Path) -> str:
    return str(run_dir.relative_to(root)) or "."


def collect_with_failures(root: str | Path) -> tuple[list[dict], list[str]]:
    """The rows of the readable summaries, and one line per job without one: its recorded
    failure, an unreadable summary, or a job directory (``.hydra/``) the job never finished."""
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
            failures[path.parent] = describe(read_failure(path))
    for hydra_dir in root.rglob(".hydra"):  # a sweep's job directories, beside its multirun.yaml
        is_job = (hydra_dir.parent.parent / "multirun.yaml").is_file()
        if is_job and hydra_dir.parent not in done | failures.keys():
            failures[hydra_dir.parent] = describe({"job": _job_name(hydra_dir.parent, root), "error":
                                                   "no summary.json: the job did not finish (stopped, killed or running)"})
    rows.sort(key=lambda r: (str(r["model"]), str(r["method"]), str(r["allocation"]),
                             _number(r["target_sparsity"]), _number(r["seed"])))
    by_job = sorted(failures, key=lambda d: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in d.parts])  # job 2 before job 10
    return rows, [failures[d] for d in by_job]


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


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="unipts-collect", description=__doc__)
    parser.add_argument("sweep_dir", help="a folder holding run directories with summary.json; jobs without "
                        "one are named on stderr (exit status 1)")
    parser.add_argument("--csv", help="CSV file to write (default: <sweep_dir>/results.csv)")
    args = parser.parse_args(argv)

    def refuse(line: str) -> None:
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)

    try:
        rows, failures = collect_with_failures(args.sweep_dir)
        if rows:
            to_csv(rows, args.csv or Path(args.sweep_dir) / "results.csv")
    except FileNotFoundError as exc:
        refuse(f"sweep_dir: {exc}")
    except UniptsError as exc:  # the CSV could not be written
        refuse(f"--csv: {exc}")
    if rows:
        print(to_markdown(rows), end="")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if not rows and not failures:
        refuse(f"sweep_dir: no summary.json under {args.sweep_dir}")
    if failures:  # the table holds what finished; the status says that something did not
        sys.exit(1)


if __name__ == "__main__":
    main()
