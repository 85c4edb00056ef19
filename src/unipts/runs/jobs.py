"""The failure record of a sweep job: written into the job's directory by the entry point when the
job fails, read at the end of the sweep (its exit status) and by ``unipts-collect`` (its report).

``<job dir>/failure.json``: ``{"job": "1", "overrides": ["sparsity.target=1.5"], "error": "..."}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json_atomic
from ..safe_read import UnreadableFile, read_regular

FAILURE_FILE = "failure.json"


def write_failure(job_dir: str | Path, job: str, overrides: list[str], error: str) -> None:
    write_json_atomic(Path(job_dir) / FAILURE_FILE, {"job": job, "overrides": overrides, "error": error})


def clear_failure(job_dir: str | Path) -> None:
    """A job that succeeds (e.g. rerun after a fix) is no longer a failure."""
    (Path(job_dir) / FAILURE_FILE).unlink(missing_ok=True)


def read_failure(path: Path) -> dict:
    """One failure record; an unreadable one still names its job (the folder) and why. Read as a
    regular file of bounded size: a FIFO in its place is named, never waited on."""
    try:
        record = json.loads(read_regular(path))
        if isinstance(record, dict):
            return record
        error = f"{path} holds no failure record"
    except UnreadableFile as exc:
        error = str(exc)
    except ValueError:  # not JSON, not UTF-8
        error = f"{path} is unreadable"
    return {"job": path.parent.name, "overrides": [], "error": error}


def describe(record: dict) -> str:
    """``job 1 (sparsity.target=1.5): <error>``."""
    overrides = " ".join(o for o in record.get("overrides") or [] if not o.startswith("hydra."))
    return f"job {record.get('job')}" + (f" ({overrides})" if overrides else "") + f": {record.get('error')}"
