"""Is the machine idle? Load average and the CPU share of *other* processes around a benchmark.

Speed-ups are ratios within one run, but a busy machine still distorts them (a memory-bound decode
step suffers more from a neighbour than a compute-bound verify pass). As pyperf does, the benchmark
records the load before and after and warns when the machine was not idle. Linux only (/proc); elsewhere
the fields are None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..errors import UserError

BUSY_OTHERS_SHARE = 0.10  # other processes using > 10 % of all cores = a busy machine
BUSY_LOAD_PER_CORE = 0.5


@dataclass
class CpuSample:
    t: float
    busy: int  # jiffies all cores spent not idle
    total: int  # jiffies all cores
    own: float  # seconds of CPU this process used (and the children it has waited for)


def set_threads(threads: int | None) -> None:
    """Apply a `--threads` flag (None = torch's own choice); a value below 1 is a one-line error."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be ≥ 1, got {threads}")
    torch.set_num_threads(threads)


def sample() -> CpuSample | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    times = os.times()
    own = times.user + times.system + times.children_user + times.children_system  # with the children it ran
    return CpuSample(time.time(), sum(fields) - idle, sum(fields), own)


def others_share(a: CpuSample | None, b: CpuSample | None) -> float | None:
    """Fraction of all cores' time that other processes used between two samples."""
    if a is None or b is None or b.total <= a.total:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (b.busy - a.busy) / hz
    capacity = (b.total - a.total) / hz
    return max(0.0, busy - (b.own - a.own)) / capacity


def snapshot(seconds: float = 1.0) -> dict:
    """Load average and other processes' CPU share over `seconds` of this process sleeping."""
    a = sample()
    time.sleep(seconds)
    b = sample()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    share = others_share(a, b)
    return {"load_avg_1m": round(load, 2) if load is not None else None,
            "others_cpu_share": round(share, 3) if share is not None else None}


def report(before: dict, during: float | None, after: dict) -> dict:
    """The `machine_load` record of a run, with `busy` set when any reading exceeds the thresholds."""
    cores = os.cpu_count() or 1
    shares = [s for s in (before.get("others_cpu_share"), during, after.get("others_cpu_share")) if s is not None]
    loads = [x for x in (before.get("load_avg_1m"), after.get("load_avg_1m")) if x is not None]
    busy = any(s > BUSY_OTHERS_SHARE for s in shares) or any(x / cores > BUSY_LOAD_PER_CORE + 1 for x in loads)
    return {"before": before, "during_others_cpu_share": round(during, 3) if during is not None else None,
            "after": after, "cores": cores, "torch_threads": torch.get_num_threads(), "busy": busy}


def warning(load: dict) -> str | None:
    if not load["busy"]:
        return None
    return (f"warning: the machine was busy during this benchmark (other processes used up to "
            f"{max(s for s in [load['before'].get('others_cpu_share') or 0, load['during_others_cpu_share'] or 0, load['after'].get('others_cpu_share') or 0]):.0%} "
            f"of the CPU; load average {load['before'].get('load_avg_1m')} → {load['after'].get('load_avg_1m')}); "
            "timings and speed-ups are not reliable — rerun on an idle machine")


def emit(result: dict, text: str, as_json: bool) -> None:
    """Print a micro-benchmark's result: the busy-machine warning if any, its table, then (as_json) one
    JSON object on the last line."""
    import json

    if warning(result["load"]):
        print(warning(result["load"]))
    print(text)
    if as_json:
        print(json.dumps(result))
