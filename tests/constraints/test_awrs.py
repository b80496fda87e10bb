"""AWRS: the first accepted token is an exact sample of p·1[c]/Z, and its weight is unbiased for Z."""

import math

import pytest
import torch
from constraint_cases import CONSTRAINTS, satisfied

import decodelab
from decodelab.constraints.awrs import awrs_token

from stat_utils import ALPHA, chi2_pvalue

V = 40
N = 4000


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(V, generator=g) * 1.5, 0).double()
    valid = set(torch.randperm(V, generator=g)[: V // 3].tolist())
    return p, valid


@pytest.mark.parametrize("seed", [0, 1])
def test_first_token_is_exactly_the_constrained_distribution_and_weight_is_unbiased(seed):
    """α = 1e-3 for the chi-square; the weight's mean is within 4 standard errors of the true Z
    (two-sided α ≈ 6e-5 by the CLT over N = 4000 draws)."""
    p, valid = _problem(seed)
    z = float(sum(p[t] for t in valid))
    gen = torch.Generator().manual_seed(100 + seed)
    draws = [awrs_token(p.log(), valid.__contains__, gen) for _ in range(N)]
    exact = {t: float(p[t]) / z for t in valid}
    assert chi2_pvalue([t for t, _, _ in draws], exact) > ALPHA
    w = torch.tensor([math.exp(lw) for _, lw, _ in draws], dtype=torch.float64)
    assert abs(float(w.mean()) - z) < 4 * float(w.std()) / math.sqrt(N), (float(w.mean()), z)
    assert max(c for _, _, c in draws) <= 2 * V  # each round checks a token at most once


def test_nothing_valid_kills_the_particle():
    p, _ = _problem(0)
    token, log_w, checks = awrs_token(p.log(), lambda t: False, torch.Generator().manual_seed(0))
    assert token is None and log_w == -math.inf and checks == V


@pytest.fixture(scope="module")
def pyco():
    return decodelab.load("builtin:pyco")


def test_awrs_at_temperature_zero_is_constrained_greedy(pyco):
    for constraint, prompt in zip(CONSTRAINTS[::2], ["x = ", "def f(a):\n    return ", "y = [", "print(", "z = "]):
        want = decodelab.generate(pyco, prompt, max_new_tokens=40, constraint=constraint)
        got = decodelab.generate(pyco, prompt, method="awrs", temperature=0, max_new_tokens=40, constraint=constraint)
        assert got.token_ids == want.token_ids, (constraint, prompt)


@pytest.mark.parametrize("n_particles", [1, 4])
def test_awrs_output_satisfies_the_constraint(pyco, n_particles):
    for k, constraint in enumerate(CONSTRAINTS[1::3]):
        g = decodelab.generate(pyco, "x = ", method="awrs", n_particles=n_particles, seed=k, max_new_tokens=48,
                               constraint=constraint)
        assert g.finish_reason == "stop" and satisfied(constraint, g.text), (n_particles, constraint, g.text)
