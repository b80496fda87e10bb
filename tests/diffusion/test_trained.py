"""The embedded task models: same size, load as their kinds, and solve held-out items above a floor.

The floors are regression floors for deterministic (temperature 0) decoding of fixed items
(seed 0, never trained on — see decodelab/tasks/train.py); the measured figures and the command
that gives them are in docs/DIFFUSION.md. No statistics involved: the same items give the same result.
"""

from __future__ import annotations

import math

import pytest

import decodelab
from decodelab import tasks

N = 10  # items per task
# measured on these 70 items (docs/DIFFUSION.md): 84.3 %, 54.3 %, 54.3 %; floors leave ~10 points of slack
FLOORS = {("builtin:tasks-ar", "greedy", ()): 0.70,
          ("builtin:tasks-diffusion", "llada", ()): 0.40,
          ("builtin:tasks-diffusion", "fastdllm", (("threshold", 0.9),)): 0.40}


@pytest.fixture(scope="module")
def models():
    return {name: decodelab.load(name) for name in ("builtin:tasks-ar", "builtin:tasks-diffusion")}


@pytest.fixture(scope="module")
def items():
    return [it for task in tasks.names() for it in tasks.make(task, N, seed=0)]


def test_same_size_and_kinds(models):
    ar, diff = models["builtin:tasks-ar"], models["builtin:tasks-diffusion"]
    assert (ar.kind, diff.kind) == ("causal", "diffusion")
    from safetensors import safe_open

    from decodelab.model.lm import builtin_path

    def stored(name):  # from the shipped weights (a backend may pack its matmul weights out of .parameters())
        with safe_open(builtin_path(name) / "model.safetensors", "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

    count = [stored(name) for name in ("builtin:tasks-ar", "builtin:tasks-diffusion")]
    assert count[0] == count[1] > 100_000
    assert ar.tokenizer.get_vocab() == diff.tokenizer.get_vocab()


def _accuracy(lm, method, params, items):
    gens = decodelab.generate_batch(lm, [it.prompt for it in items], method=method, max_new_tokens=24, **params)
    return sum(g.text.strip() == it.answer for g, it in zip(gens, items)) / len(items), gens


@pytest.mark.parametrize("key", list(FLOORS))
def test_accuracy_above_the_floor(models, items, key):
    name, method, params = key
    accuracy, _ = _accuracy(models[name], method, dict(params), items)
    assert accuracy >= FLOORS[key], f"{name} {method} {params}: accuracy {accuracy:.2f} < floor {FLOORS[key]}"


def test_parallel_decoding_takes_fewer_passes_and_higher_threshold_never_fewer(models, items):
    lm, few = models["builtin:tasks-diffusion"], items[::N // 2]  # two items per task, one at a time
    passes = {t: sum(decodelab.generate(lm, it.prompt, method="fastdllm", max_new_tokens=24, threshold=t,
                                        block_length=0).stats.forward_passes for it in few)
              for t in (0.5, 0.7, 0.9, 1.0)}
    assert passes[0.5] <= passes[0.7] <= passes[0.9] <= passes[1.0]
    one_per_step = sum(decodelab.generate(lm, it.prompt, method="llada", max_new_tokens=24).stats.forward_passes
                       for it in few)
    assert passes[1.0] == one_per_step  # threshold 1 is LLaDA's one token per pass
    assert passes[0.9] < passes[1.0] / 2
