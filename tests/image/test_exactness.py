"""SJD samples the raster model's distribution exactly: chi-square over every 2×2 image.

A random-init model on a 2×2 grid with K = 3 levels (81 possible images), its output head
scaled ×10 so that the conditionals are peaked and depend on the context. SJD with window L = 3
(two drafts + bonus; the paper's Jacobi update and our `reinit` update) is sampled M = 3,000 times and compared with the exact joint probability
of each image, computed from the raster conditionals. α = 1e-3 (stat_utils.ALPHA, the suite's
level). Power: the same test run on a mutant that resamples from p instead of the residual
norm(max(0, p - q)) after a rejection must reject, and the power of the test against that
mutant, estimated from the non-central χ² with λ̂ = χ²_mutant − df, must be ≥ 0.9.
"""

import itertools

import pytest
import torch
from conftest import tiny_image_lm
from scipy.stats import chi2, ncx2

from decodelab.image import image_methods, methods
from decodelab.image.model import ImageModel, Processing

from stat_utils import ALPHA, chi2_pvalue

M = 3000
CASES = {"plain": Processing(), "cfg2-top2-temp0.8": Processing(cfg_scale=2.0, temperature=0.8, top_k=2)}


@pytest.fixture(scope="module")
def lm():
    return tiny_image_lm(2, 2, 3, sharpen=10.0, seed=1)


def exact_joint(lm, processing: Processing, label: int) -> dict:
    grids = torch.tensor(list(itertools.product(range(3), repeat=4)))
    model = ImageModel(lm, processing)
    p = model.raster_probs(torch.full((len(grids),), label), grids, torch.ones_like(grids, dtype=torch.bool))
    joint = p.gather(-1, grids[..., None]).squeeze(-1).prod(-1)
    return {tuple(g.tolist()): float(q) for g, q in zip(grids, joint)}


def sjd_samples(lm, processing: Processing, label: int, seed: int, init: str = "random", update: str = "jacobi") -> list:
    model = ImageModel(lm, processing)
    gens = [torch.Generator().manual_seed(seed * M + i) for i in range(M)]
    tokens, stats = image_methods()["sjd"].run(model, torch.full((M,), label), gens, window=3, init=init, update=update)
    assert max(s["forward_passes"] for s in stats) <= 4
    return [tuple(t) for t in tokens.tolist()]


def statistic(samples: list, probs: dict) -> float:
    return chi2.isf(max(chi2_pvalue(samples, probs), 1e-300), df=len(probs) - 1)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("init, update", [("random", "jacobi"), ("sample_horizon", "jacobi"),
                                          ("repeat_horizon", "reinit"), ("sample_horizon", "reinit")])
def test_sjd_matches_raster_distribution(lm, case, init, update):
    probs = exact_joint(lm, CASES[case], label=4)
    assert chi2_pvalue(sjd_samples(lm, CASES[case], 4, seed=0, init=init, update=update), probs) > ALPHA


def test_the_test_has_power_against_a_wrong_residual(lm, monkeypatch):
    def wrong_verify(row, p, gen):  # resample from p instead of norm(max(0, p - q))
        a = row.accepted
        for j in range(a, a + row.drafted):
            x = row.tokens[j]
            if methods.uniform(gen) < min(1.0, (p[j, x] / row.q[j, x]).item()):
                continue
            row.tokens[j] = torch.multinomial(p[j], 1, generator=gen)
            return j + 1 - a
        end = a + row.drafted
        if end < len(row.tokens):
            row.tokens[end] = torch.multinomial(p[end], 1, generator=gen)
            return end + 1 - a
        return end - a

    monkeypatch.setattr(methods, "verify_window", wrong_verify)
    probs = exact_joint(lm, CASES["plain"], label=4)
    samples = sjd_samples(lm, CASES["plain"], 4, seed=1)
    assert chi2_pvalue(samples, probs) < ALPHA
    df = sum(1 for q in probs.values() if q * M >= 5)  # cells after pooling, minus one, plus the pooled cell
    lam = max(0.0, statistic(samples, probs) - df)
    power = ncx2.sf(chi2.isf(ALPHA, df), df, lam)
    print(f"power against the wrong-residual mutant at alpha={ALPHA}: {power:.3f} (lambda={lam:.1f}, df={df})")
    assert power >= 0.9, power
