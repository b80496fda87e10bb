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
    table = markdown({"model": "builtin:pyco", "steps": 64, "repeats": 5, "threads": 2, "ms_per_token": ms})
    assert "| main | 2.0 | 1.00× |" in table and "| worker, loaded on main | 4.5 | 2.25× |" in table


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_thread_cost_child_times_every_scenario(scenario):
    """Each scenario's child body runs as the bench runs it (the in-place loader call included), returning
    one positive time per repeat."""
    from decodelab.bench.thread_cost import _child

    times = _child(scenario, None, steps=2, repeats=2, threads=1)
    assert len(times) == 2 and all(t > 0 for t in times)
