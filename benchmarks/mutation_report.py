"""The mutation score of each engine module, from the results ``mutmut run`` left in ``mutants/``
(``make mutation`` runs both).

    python benchmarks/mutation_report.py [--equivalent benchmarks/mutation_equivalent.txt] [--survivors]

Score = killed / (mutants - equivalent), per module and per group (``sparse/``, ``objectives.py``,
``search/``); a timeout counts as killed (the mutant never finished), a mutant no selected test
reaches ("no tests") counts as surviving. Equivalent mutants (the program behaves the same, so no
test can tell) are listed in the equivalents file, one ``<mutant name>  # why`` per line.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILLED = {1, 3, 36, 24, -24, 152, 255}  # mutmut's "killed" and "timeout" exit codes
SURVIVED = {0}
NO_TESTS = {5, 33}
GROUPS = {"sparse/": "unipts.sparse.", "objectives.py": "unipts.objectives.", "search/": "unipts.search."}


def load_results(mutants: Path) -> dict[str, int | None]:
    """Exit code of every mutant, by name (``unipts.sparse.masks.x_magnitude_mask__mutmut_3``)."""
    codes: dict[str, int | None] = {}
    for meta in sorted(mutants.glob("src/**/*.py.meta")):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def load_equivalent(path: Path) -> dict[str, str]:
    """``{mutant name: why}`` from the equivalents file."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, _, why = line.partition("#")
            if name.strip():
                out[name.strip()] = why.strip()
    return out


def module_of(name: str) -> str:
    return name.split(".x_")[0].split(".xǁ")[0]


def status(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "other"


def tally(codes: dict[str, int | None], equivalent: dict[str, str]) -> dict[str, Counter]:
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, code in codes.items():
        kind = "equivalent" if name in equivalent and status(code) != "killed" else status(code)
        by_module[module_of(name)][kind] += 1
        by_module[module_of(name)]["total"] += 1
    return by_module


def score(c: Counter) -> float | None:
    checked = c["total"] - c["equivalent"] - c["not checked"]
    return c["killed"] / checked if checked else None


def table(by_module: dict[str, Counter]) -> str:
    rows = ["| module | mutants | killed | survived | no tests | equivalent | not checked | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row(label: str, c: Counter) -> str:
        s = score(c)
        return (f"| {label} | {c['total']} | {c['killed']} | {c['survived']} | {c['no tests']} | {c['equivalent']} | "
                f"{c['not checked']} | {'' if s is None else f'{100 * s:.1f}%'} |")

    for group, prefix in GROUPS.items():
        members = {m: c for m, c in by_module.items() if (m + ".").startswith(prefix)}
        if not members:
            continue
        for module in sorted(members):
            rows.append(row(f"`{module}`", members[module]))
        rows.append(row(f"**{group}**", sum(members.values(), Counter())))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--equivalent", type=Path, default=ROOT / "benchmarks" / "mutation_equivalent.txt")
    parser.add_argument("--survivors", action="store_true", help="also list the surviving mutants' names")
    args = parser.parse_args(argv)
    codes = load_results(args.mutants)
    if not codes:
        raise SystemExit(f"error: {args.mutants}: no mutmut results (run `make mutation`)")
    equivalent = load_equivalent(args.equivalent)
    print(table(tally(codes, equivalent)))
    if args.survivors:
        for name, code in sorted(codes.items()):
            if status(code) in ("survived", "no tests") and name not in equivalent:
                print(f"{status(code)}: {name}")


if __name__ == "__main__":
    main()
