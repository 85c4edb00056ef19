"""Collect ``summary.json`` files (a sweep, a benchmark grid) into a CSV and a markdown table."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from .atomic import write_text_atomic

COLUMNS = ["method", "model", "data", "allocation", "objective", "masks", "pattern", "target_sparsity",
           "achieved_sparsity", "calib_size", "seed", "eval_split", "top1", "top5", "dense_top1", "search_s",
           "finetune_s", "total_s", "overrides", "run_dir"]


def find_summaries(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    return sorted(root.rglob("summary.json"))


def row(summary_path: Path, root: Path) -> dict:
    s = json.loads(summary_path.read_text())
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


def collect(root: str | Path) -> list[dict]:
    root = Path(root)
    rows = [row(p, root) for p in find_summaries(root)]
    return sorted(rows, key=lambda r: (str(r["model"]), str(r["method"]), str(r["allocation"]),
                                       r["target_sparsity"] or 0, r["seed"] or 0))


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
    parser.add_argument("sweep_dir", help="a folder holding run directories with summary.json")
    parser.add_argument("--csv", help="CSV file to write (default: <sweep_dir>/results.csv)")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.sweep_dir)
    except FileNotFoundError as exc:
        sys.exit(f"error: sweep_dir: {exc}")
    if not rows:
        sys.exit(f"error: sweep_dir: no summary.json under {args.sweep_dir}")
    to_csv(rows, args.csv or Path(args.sweep_dir) / "results.csv")
    print(to_markdown(rows), end="")


if __name__ == "__main__":
    main()
