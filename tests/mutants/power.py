"""Power of the distribution tests against the gallery's distribution mutants (`run.py --power`).

For each mutant that names tests of tests/methods/test_distribution.py (and for the unmutated source,
as a check that the estimate is ≈ 0 there), draw M fresh samples (seeds 10⁶ …, disjoint from the
test's) of each named method from a mutated copy, and compute on the test's own cells (at n = N):
- Pearson's statistic X over the M samples; E[X] = df + λ_M, so λ̂ = max(0, X − df)·N/M estimates the
  noncentrality the test sees at its N samples (stat_utils.min_detectable_tv has the asymptotics);
- the power P(χ'²(df, λ̂) > χ²_{df, 1−α}) — and, when samples fall outside the target's support, at
  least 1 − (1 − f̂)^N with f̂ their fraction (one such sample makes the test fail);
- the empirical total variation on the cells (biased upwards by sampling noise ≈ √(df/M)).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

M = 2000
FIRST_SEED = 10**6


def _sample(method: str, m: int) -> dict:
    """In the (possibly mutated) copy: statistics of m samples of `method` against the exact joint."""
    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tests"), str(root / "tests" / "methods")]
    import test_distribution as td
    from scipy.stats import chi2, ncx2

    from stat_utils import ALPHA, cells, exact_joint

    exact = exact_joint(td.TARGET, td.PROMPT, td.DEPTH, **td.PARAMS)
    samples, accepted, drafted = td.draw(method, m, FIRST_SEED, exact)
    groups = cells(exact, td.N)
    counts = Counter(samples)
    outside = sum(c for s, c in counts.items() if exact.get(s, 0.0) <= 0.0) / m
    obs = [sum(counts[k] for k in g) / m for g in groups]
    exp = [sum(exact[k] for k in g) for g in groups]
    stat = m * sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(groups) - 1
    lam = max(0.0, stat - df) * td.N / m
    power = float(ncx2.sf(chi2.ppf(1 - ALPHA, df), df, lam))
    power = max(power, 1.0 - (1.0 - outside) ** td.N)
    tv = 0.5 * sum(abs(o - e) for o, e in zip(obs, exp)) + outside / 2
    return {"method": method, "m": m, "n": td.N, "df": df, "statistic": round(stat, 1),
            "lambda_at_n": round(lam, 1), "power": round(power, 6), "tv_on_cells": round(tv, 4),
            "outside_support": outside, "accepted": accepted, "drafted": drafted}


def _methods(mutant) -> list[str]:
    return [t.split("[", 1)[1].rstrip("]") for t in (mutant.tests if mutant else ())
            if "test_distribution.py" in t]


def report_power(mutants, make_copy, env, root: Path, m: int = M) -> int:
    rows = []
    for mutant in [None, *mutants]:
        methods = _methods(mutant) if mutant else ["speculative", "pld"]
        if not methods:
            continue
        with tempfile.TemporaryDirectory(prefix="mutant-power-") as tmp:
            src = make_copy(Path(tmp), mutant)
            for method in methods:
                out = subprocess.run([sys.executable, __file__, method, str(m)], cwd=root, env=env(src),
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                row = {"mutant": mutant.name if mutant else "(none)", **json.loads(out.stdout.splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    print(json.dumps(_sample(sys.argv[1], int(sys.argv[2]))))
