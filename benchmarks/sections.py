"""Rewriting one generated section of BENCHMARKS.md in place, shared by the benchmark scripts.

Standard library only: ``bench_deploy.py`` imports it in its DeepSparse worker environment,
which has no torch.
"""

from __future__ import annotations

from pathlib import Path


def rewrite_section(path: Path, start: str, end: str, section: str, heading: str) -> None:
    """Replace the text from the ``start`` marker to the ``end`` marker of ``path`` with
    ``section`` (which carries both markers itself), or, when the file has no such pair yet,
    append it under ``heading`` (a Markdown heading line)."""
    if not (section.startswith(start) and section.rstrip().endswith(end)):
        raise ValueError(f"the section must run from {start} to {end}")
    text = path.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{section}\n"
    path.write_text(text)
