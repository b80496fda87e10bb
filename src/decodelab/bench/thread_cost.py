"""`python -m decodelab.bench.thread_cost`: what generating on a worker thread costs, by where the model was loaded.

A server (or any app) loads its model once and generates on a worker thread. With PyTorch's GNU OpenMP,
every thread that runs a parallel region keeps a thread team; once a process holds more OpenMP threads
than CPUs, libgomp stops spinning between parallel regions and every region wakes its workers through
the kernel — a decode step is dozens of regions. This times native greedy decoding (ms per token,
prefill excluded) in three kinds of fresh process, run in interleaved rounds:

- `main`: loaded and generated on the main thread (one team);
- `worker, loaded on main`: the model loaded on the main thread by the loader's body run in place (the
  behaviour before `decodelab.load` moved its work to a short-lived thread), generation on a worker —
  two teams;
- `worker, decodelab.load`: `decodelab.load` as it is (its work on a short-lived thread, whose team
  leaves with it), generation on a worker — one team.

The machine's load is recorded; each process runs the same prompt and steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading

from . import machine

SCENARIOS = ("main", "worker, loaded on main", "worker, decodelab.load")


def _child(scenario: str, model: str | None, steps: int, repeats: int, threads: int | None) -> list[float]:
    """ms per decode step of each repeat, in this process."""
    import torch

    from ..model import lm as lm_module
    from .decode_cost import session_ms

    machine.set_threads(threads)
    if scenario == "worker, loaded on main":  # the loader's body on this thread: its OpenMP team stays
        lm = lm_module._load(model, "cpu", None, "native", False, False, False, "auto")
    else:
        lm = lm_module.load(model, backend="native")
    ids = lm.encode("import os\n\n\ndef main():")
    out: list[float] = []

    def run() -> None:
        with torch.inference_mode():
            session_ms(lm, ids, 8)  # warm-up
            out.extend(session_ms(lm, ids, steps) for _ in range(repeats))

    if scenario == "main":
        run()
    else:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    return out


def measure(model: str | None, steps: int, repeats: int, threads: int | None, rounds: int = 3) -> dict:
    """Each scenario's process run `rounds` times, the scenarios interleaved round by round (a machine whose
    speed drifts over minutes — a VM under a busy host — then moves every scenario alike); ms per token is
    the median of every repeat of every round, `per_round` the median of each round."""
    before, start = machine.snapshot(), machine.sample()
    times: dict[str, list[list[float]]] = {scenario: [] for scenario in SCENARIOS}
    for _ in range(rounds):
        for scenario in SCENARIOS:
            cmd = [sys.executable, "-m", "decodelab.bench.thread_cost", "--child", scenario, "--steps", str(steps),
                   "--repeats", str(repeats)] + (["--model", model] if model else []) + \
                  (["--threads", str(threads)] if threads else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times[scenario].append(json.loads(done.stdout.strip().splitlines()[-1]))
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    return {"model": model or "builtin:pyco", "steps": steps, "repeats": repeats, "rounds": rounds,
            "threads": threads,
            "ms_per_token": {k: round(statistics.median(x for r in v for x in r), 3) for k, v in times.items()},
            "per_round": {k: [round(statistics.median(r), 3) for r in v] for k, v in times.items()},
            "load": load_info}


def markdown(result: dict) -> str:
    base = result["ms_per_token"]["main"]
    lines = [f"{result['model']}, native greedy, {result['steps']} steps, median of {result['repeats']} repeats × "
             f"{result['rounds']} rounds (the scenarios interleaved), torch threads: {result['threads'] or 'default'}",
             "", "| generating on | ms / token | × main | each round |", "|---|---:|---:|---|"]
    for scenario, ms in result["ms_per_token"].items():
        lines.append(f"| {scenario} | {ms} | {ms / base:.2f}× | {' / '.join(map(str, result['per_round'][scenario]))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m decodelab.bench.thread_cost", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default builtin:pyco (a model the native backend runs)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="runs of every scenario's process, interleaved")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", choices=SCENARIOS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.model, args.steps, args.repeats, args.threads)))
        return
    if args.rounds < 1:
        p.error(f"--rounds must be ≥ 1, got {args.rounds}")
    result = measure(args.model, args.steps, args.repeats, args.threads, args.rounds)
    machine.emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
