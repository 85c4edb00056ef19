"""How many loader processes decode images beside the main process (``data.num_workers``)."""

from __future__ import annotations

import os

AUTO = "auto"
#: ``auto`` never starts more than this many workers per training process: past it, decoding and
#: augmenting images rarely limits the step time, and each worker holds a copy of the data set.
AUTO_CAP = 8


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a batch
    scheduler or ``taskset`` restricts it below the machine's count), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_workers(cpus: int, processes: int = 1) -> int:
    """Workers per training process when ``processes`` share ``cpus``: its share of the CPUs less
    one for the process itself (it runs the network), capped at :data:`AUTO_CAP`; 0 (load in the
    main process) when the share is one CPU."""
    share = cpus // max(1, processes)
    return max(0, min(AUTO_CAP, share - 1))


def is_valid(setting) -> bool:
    """``auto`` or a non-negative integer (not a boolean)."""
    return setting == AUTO or (isinstance(setting, int) and not isinstance(setting, bool) and setting >= 0)


def loader_workers(setting: int | str, processes: int = 1) -> int:
    """The number of workers ``data.num_workers`` asks for: an integer as it is, ``auto`` by
    :func:`auto_workers` on :func:`available_cpus`."""
    if not is_valid(setting):
        raise ValueError(f"data.num_workers: {setting!r} is not {AUTO!r} or an integer >= 0")
    return auto_workers(available_cpus(), processes) if setting == AUTO else int(setting)
