"""`decodelab.load` does its work on a short-lived thread (model/lm.py): the calling thread starts no
OpenMP team of its own, so a worker thread that generates later is the process's only team (otherwise
GNU OpenMP throttles every parallel region; `python -m decodelab.bench.thread_cost` measures it)."""

import threading

import pytest

import decodelab
from decodelab.bench.thread_cost import SCENARIOS, markdown
from decodelab.errors import ModelError
from decodelab.model import lm as lm_module


def test_load_runs_on_its_own_thread_and_returns_what_it_loaded(monkeypatch):
    seen = {}
    real = lm_module._load

    def spy(*args):
        seen["thread"] = threading.current_thread()
        return real(*args)

    monkeypatch.setattr(lm_module, "_load", spy)
    lm = decodelab.load("builtin:pyco-draft")
    assert seen["thread"] is not threading.current_thread() and seen["thread"].name == "decodelab-load"
    assert not seen["thread"].is_alive()  # joined: it took its OpenMP team with it
    assert lm.name == "builtin:pyco-draft" and lm.encode("def f():")


def test_a_load_error_is_raised_in_the_callers_thread_as_itself():
    with pytest.raises(ModelError, match="no embedded model"):
        decodelab.load("builtin:no-such-model")
    with pytest.raises(ModelError, match="unknown backend"):
        decodelab.load(backend="tpu")


def test_thread_cost_table_states_each_scenario_against_the_main_thread():
    ms = dict(zip(SCENARIOS, (2.0, 4.5, 2.1)))
    rounds = dict(zip(SCENARIOS, ([1.9, 2.0], [4.5, 4.6], [2.1, 2.2])))
    table = markdown({"model": "builtin:pyco", "steps": 64, "repeats": 5, "rounds": 2, "threads": 2,
                      "ms_per_token": ms, "per_round": rounds})
    assert "| main | 2.0 | 1.00× | 1.9 / 2.0 |" in table and "| worker, loaded on main | 4.5 | 2.25× | 4.5 / 4.6 |" in table
    assert "5 repeats × 2 rounds (the scenarios interleaved)" in table


def test_thread_cost_runs_the_scenarios_in_interleaved_rounds(monkeypatch):
    """Every round runs each scenario's process once, in order; the figure is the median of all repeats."""
    import json
    import subprocess
    from types import SimpleNamespace

    from decodelab.bench import thread_cost

    order = []

    def fake_run(cmd, **kwargs):
        scenario = cmd[cmd.index("--child") + 1]
        order.append(scenario)
        base = {"main": 2.0, "worker, loaded on main": 4.0, "worker, decodelab.load": 2.2}[scenario]
        return SimpleNamespace(stdout=json.dumps([base + 0.1 * len(order), base]) + "\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(thread_cost.machine, "snapshot", lambda seconds=1.0: {})
    result = thread_cost.measure(None, steps=4, repeats=2, threads=1, rounds=2)
    assert order == list(SCENARIOS) * 2
    assert result["per_round"]["main"] == [2.05, 2.2]  # round 1: [2.1, 2.0]; round 2: [2.4, 2.0]
    assert result["ms_per_token"]["main"] == 2.05  # the median of 2.1, 2.0, 2.4, 2.0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_thread_cost_child_times_every_scenario(scenario):
    """Each scenario's child body runs as the bench runs it (the in-place loader call included), returning
    one positive time per repeat."""
    from decodelab.bench.thread_cost import _child

    times = _child(scenario, None, steps=2, repeats=2, threads=1)
    assert len(times) == 2 and all(t > 0 for t in times)
