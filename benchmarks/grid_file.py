"""A benchmark grid's file (``benchmarks/grids/<name>.yaml``): read, checked and turned into settings.

The file's own header comments describe the format. Everything is checked before any run: an
unknown key, a setting defined twice, a group or setting that does not exist, a value of the wrong
type are each refused in one line naming the file and the key (``GridError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

GRIDS = Path(__file__).resolve().parent / "grids"
SELF = "_self_"  # in a family's overrides: where each member's own go
RESULTS_TOKEN = "${results}"


class GridError(ValueError):
    """A grid file that cannot be run; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Setting:
    """One row of the comparison: the overrides every run of it shares, at which sparsities and seeds."""

    name: str
    overrides: tuple[str, ...]
    targets: tuple[float, ...] = (0.9,)
    seeds: tuple[int, ...] = (0, 1, 2)
    pattern: str | None = None  # N:M rows: the target follows from the pattern
    unlabeled: bool = False  # calibrate on the same images written to a flat folder without labels (calib.root)
    against: str | None = None  # the setting the report compares this one with (an ablation's recipe)
    more_seeds: tuple[int, ...] = ()  # further seeds at main_target only, where two rows are compared at a fine margin
    main_target: float = 0.9  # the grid's target: where more_seeds run
    named_only: bool = False  # runs only when named (a full-data run of an hour or more on a CPU)

    def runs(self) -> list[tuple[str, list[str]]]:
        """``(run id, overrides)`` of each run of this setting; of two overrides of one key the later
        wins (a row states the recipe it was measured with, then what it changes)."""
        out = []
        for target in self.targets:
            for seed in (*self.seeds, *self.more_seeds) if target == self.main_target else self.seeds:
                extra = [f"sparsity.target={target}", f"seed={seed}", f"calib.seed={seed}"]
                if self.pattern:
                    extra.append(f"sparsity.pattern={self.pattern}")
                if self.unlabeled:
                    extra.append(f"calib.root=UNLABELED/seed{seed}")
                merged = {o.split("=", 1)[0]: o for o in [*self.overrides, *extra]}
                out.append((f"{self.name}/s{target}/seed{seed}", list(merged.values())))
        return out


@dataclass(frozen=True)
class Grid:
    """A grid file's values: the experiment every run composes, where its runs are kept, its settings."""

    name: str  # the file's stem
    path: Path
    experiment: str
    title: str
    results: str  # the folder under the results root that keeps its runs; also its CSV's and plot's name
    targets: tuple[float, ...]  # the sparsities the report compares the methods at
    target: float  # the sparsity of a setting that names none: ablations, extra seeds, the reference
    reference: str  # the yardstick the report compares with; like a named_only setting, it runs only when named
    settings: dict[str, Setting]  # in the file's order, the reference among them

    def default_settings(self) -> list[str]:
        return [name for name, s in self.settings.items() if name != self.reference and not s.named_only]


# The keys a setting may give, each with the check its value gets (a method of the reader, by name);
# ``overrides`` are expanded instead.
SETTING_KEYS = {"overrides": None, "targets": "fractions", "seeds": "seeds", "pattern": "pattern",
                "unlabeled": "boolean", "against": "text", "more_seeds": "ints", "named_only": "boolean"}
FAMILY_KEYS = {"prefix", "settings", *SETTING_KEYS}
GRID_REQUIRED = ("experiment", "title", "results", "seeds", "targets", "target", "reference", "settings")
GRID_KEYS = {*GRID_REQUIRED, "groups", "families"}
NAME = re.compile(r"[A-Za-z0-9][\w.:+-]*")  # a setting's name names its runs' folders; a group's has no "="


def resolve(grid: str | Path) -> Path:
    """``--grid``: a file, or the name of one in ``benchmarks/grids/``."""
    path = Path(grid)
    return path if path.suffix in (".yaml", ".yml") else GRIDS / f"{grid}.yaml"


def load_grid(grid: str | Path, results_root: Path) -> Grid:
    """The grid ``grid`` names (see :func:`resolve`); ``results_root`` holds its committed result
    folder, which ``${results}`` in an override stands for."""
    return _Reader(resolve(grid), results_root).grid()


class _UniqueKeys(yaml.SafeLoader):
    """YAML's loader, but a key given twice in one mapping is an error, not the later value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat what it merges
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _Duplicate(f"{key}", key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Duplicate(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.key, self.line = key, line


class _Reader:
    def __init__(self, path: Path, results_root: Path):
        self.path, self.results_root = path, results_root
        self.groups: dict[str, list] = {}
        self.results = ""
        self.where: dict[str, str] = {}  # setting name -> its key in the file

    def fail(self, key: str, problem: str):
        raise GridError(f"{self.path}: {key}: {problem}")

    def read(self) -> dict:
        if not self.path.is_file():
            raise GridError(f"{self.path}: no such grid file (the grids in {GRIDS}: "
                            f"{', '.join(sorted(p.stem for p in GRIDS.glob('*.yaml')))})")
        try:
            return yaml.load(self.path.read_text(), Loader=_UniqueKeys)
        except _Duplicate as dup:
            raise GridError(f"{self.path}:{dup.line}: {dup.key}: defined twice") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise GridError(f"{self.path}{where}: not YAML: {getattr(e, 'problem', None) or e}") from None

    def grid(self) -> Grid:
        top = self.mapping(self.read(), "", GRID_KEYS, GRID_REQUIRED)
        self.results = self.text(top["results"], "results")
        if not NAME.fullmatch(self.results):  # one folder under the results root, and its CSV's name
            self.fail("results", f"{self.results!r} is not a folder name")
        self.groups = self.mapping(top.get("groups") or {}, "groups", None)
        for name, group in self.groups.items():
            if not isinstance(name, str) or not NAME.fullmatch(name):
                self.fail(f"groups.{name}", "a group's name is letters, digits and . _ : + -")
            self.strings(group, f"groups.{name}")
        for name, group in self.groups.items():  # every group, used or not: no dead entry hides an error
            self.expand(group, f"groups.{name}", (name,))
        target = self.fraction(top["target"], "target")
        base = {"seeds": self.seeds(top["seeds"], "seeds"), "targets": (target,), "main_target": target}
        settings: dict[str, Setting] = {}
        for name, spec in self.mapping(top["settings"], "settings", None).items():
            self.add(settings, name, spec, f"settings.{name}", base)
        for family, spec in self.mapping(top.get("families") or {}, "families", None).items():
            self.family(settings, spec, f"families.{family}", base)
        for name, setting in settings.items():
            if setting.against is not None and setting.against not in settings:
                self.fail(f"{self.where[name]}.against", f"{setting.against!r} is not a setting of this grid")
        reference = self.text(top["reference"], "reference")
        if reference not in settings:
            self.fail("reference", f"{reference!r} is not a setting of this grid")
        return Grid(self.path.stem, self.path, self.text(top["experiment"], "experiment"),
                    self.text(top["title"], "title"), self.results, self.fractions(top["targets"], "targets"),
                    target, reference, settings)

    def family(self, settings: dict, spec, key: str, base: dict) -> None:
        """Members named ``<prefix><member>`` with the family's keys; each member's overrides take
        the place of ``_self_`` in the family's (after them where it has none)."""
        spec = self.mapping(spec, key, FAMILY_KEYS, ("settings",))
        around = self.strings(spec.get("overrides", []), f"{key}.overrides")
        cut = around.index(SELF) if SELF in around else len(around)
        prefix = self.text(spec["prefix"], f"{key}.prefix") if "prefix" in spec else ""
        shared = {**base, **self.values(spec, key)}
        for member, member_spec in self.mapping(spec["settings"], f"{key}.settings", None).items():
            self.add(settings, f"{prefix}{member}", member_spec, f"{key}.settings.{member}", shared,
                     (around[:cut], around[cut + 1:]))

    def add(self, settings: dict, name, spec, key: str, base: dict, around=((), ())) -> None:
        """The setting ``name`` from its mapping (or its list of overrides alone) on ``base``, its
        overrides between ``around``'s two lists."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            self.fail(key, "a setting's name is letters, digits and . _ : + - (it names its runs' folders)")
        if name in settings:
            self.fail(key, f"the setting {name!r} is defined twice (first at {self.where[name]})")
        spec = {"overrides": spec} if isinstance(spec, list) else self.mapping(spec, key, set(SETTING_KEYS))
        mine = self.strings(spec.get("overrides", []), f"{key}.overrides")
        overrides = self.expand([*around[0], *mine, *around[1]], f"{key}.overrides")
        settings[name] = Setting(name, tuple(overrides), **{**base, **self.values(spec, key)})
        self.where[name] = key

    def values(self, spec: dict, key: str) -> dict:
        """The checked setting keys of ``spec`` but its overrides."""
        return {k: getattr(self, SETTING_KEYS[k])(v, f"{key}.{k}") for k, v in spec.items()
                if SETTING_KEYS.get(k)}

    def expand(self, items: list[str], key: str, through: tuple[str, ...] = ()) -> list[str]:
        """Overrides with each group name replaced by the group's overrides, in place."""
        out = []
        for item in items:
            if "=" in item or item.startswith("~"):  # a Hydra override (~key deletes one)
                out.append(item.replace(RESULTS_TOKEN, str(self.results_root / self.results)))
            elif item not in self.groups:
                self.fail(key, f"{item!r} is neither an override (key=value) nor a group "
                               f"(groups: {', '.join(self.groups) or 'none'})")
            elif item in through:
                self.fail(f"groups.{through[0]}", f"includes itself ({' -> '.join([*through, item])})")
            else:
                out += self.expand(self.groups[item], f"groups.{item}", (*through, item))
        return out

    # The type checks: each returns the checked value or refuses it.
    def mapping(self, value, key: str, allowed: set | None, required=()) -> dict:
        where = key or "the file"
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = [k for k in value if allowed is not None and k not in allowed]
        if unknown:
            self.fail(f"{key}.{unknown[0]}" if key else str(unknown[0]),
                      f"unknown key (known: {', '.join(sorted(allowed))})")
        missing = [k for k in required if k not in value]
        if missing:
            self.fail(f"{key}.{missing[0]}" if key else missing[0], "missing")
        return value

    def strings(self, value, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of overrides or group names, got {value!r}")
        return value

    def ints(self, value, key: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.fail(key, f"expected a list of integers, got {value!r}")
        return tuple(value)

    def seeds(self, value, key: str) -> tuple[int, ...]:
        if value == []:
            self.fail(key, "no seeds: the setting would have no runs")
        return self.ints(value, key)

    def fraction(self, value, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            self.fail(key, f"expected a sparsity between 0 and 1, got {value!r}")
        return float(value)

    def fractions(self, value, key: str) -> tuple[float, ...]:
        if not isinstance(value, list) or not value:
            self.fail(key, f"expected a list of sparsities, got {value!r}")
        return tuple(self.fraction(v, key) for v in value)

    def pattern(self, value, key: str) -> str:
        if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 2:4 as 2 * 60 + 4
            self.fail(key, f"{value} is a number: quote the pattern (\"2:4\")")
        if not isinstance(value, str) or not re.fullmatch(r"\d+:\d+", value):
            self.fail(key, f"expected N:M, got {value!r}")
        return value

    def boolean(self, value, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        return value

    def text(self, value, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a name, got {value!r}")
        return value
