"""Learn2PD's stable filter: the step-stability features, the error budget, on-policy trajectories, and the
filter inside the shared loop (determinism, batch-size invariance)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import decodelab
import decodelab.tasks
from decodelab.diffusion import learn2pd
from decodelab.diffusion.sampling import Step

PROMPTS = ["copy : 1 2 3 =", "sort : 40 7 =", "latin : A B _ D | _ D A B | B A D C | D C B A ="]
X = float("-inf")


def test_stability_features_by_hand():
    now = torch.tensor([[[2.0, 0.0, X], [0.0, 1.0, X], [5.0, 5.0, X]]], dtype=torch.float64)
    prev = torch.tensor([[[1.0, 0.0, X], [1.0, 0.0, X], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    got = learn2pd.stability(now, prev)
    assert got[0, :, 0].tolist() == [1.0, 0.0, 0.0]  # argmax unchanged only at position 0; 2 has no previous
    assert got[0, :, 2].tolist() == [1.0, 1.0, 0.0]  # all-zero previous logits (outside a cache slice): none

    def kl(a, b):
        p, q = (torch.softmax(torch.tensor(v, dtype=torch.float64), 0) for v in (a, b))
        return math.log1p(float((p * (p / q).log()).sum()))

    assert got[0, 0, 1].item() == pytest.approx(kl([2.0, 0.0], [1.0, 0.0]))
    assert got[0, 1, 1].item() == pytest.approx(kl([0.0, 1.0], [1.0, 0.0]))
    assert got[0, 2, 1].item() == 0.0
    assert torch.equal(learn2pd.stability(now, None), torch.zeros(1, 3, 3, dtype=torch.float64))


def test_error_budget_takes_the_largest_prefix_by_filter_probability():
    prob = torch.tensor([[0.99, 0.9, X, 0.95, 0.5], [0.4, X, X, X, X]], dtype=torch.float64)
    # errors sorted: 0.01, 0.05, 0.1, 0.5 → cumulative 0.01, 0.06, 0.16, 0.66
    picks = {b: learn2pd.within_budget(prob, b)[0].nonzero().flatten().tolist() for b in (0.005, 0.06, 0.2, 1.0)}
    assert picks == {0.005: [], 0.06: [0, 3], 0.2: [0, 1, 3], 1.0: [0, 1, 3, 4]}
    assert learn2pd.within_budget(prob, 0.5)[1].tolist() == [False] * 5  # 0.6 > 0.5; the loop's top-1 still commits


def _stable_filter(lm, tmp_path, rounds: int = 1):
    prompts = [lm.encode(p) for p in PROMPTS]
    x, y, final = learn2pd.trajectories(lm, prompts, 8, "stable")
    model = learn2pd.fit_mlp(x, y, steps=20)
    for _ in range(rounds):
        policy = learn2pd.Learned(0, 8, model, 0.5, min(lm.eos_token_ids))
        xr, yr, _ = learn2pd.trajectories(lm, prompts, 8, "stable", policy, target=final)
        x, y = torch.cat([x, xr]), torch.cat([y, yr])
        model = learn2pd.fit_mlp(x, y, steps=20)
    spec = {"kind": "stable", "features": list(learn2pd.STABLE_FEATURES),
            "state": {k: v.tolist() for k, v in model.state_dict().items()}}
    path = tmp_path / "stable.json"
    path.write_text(json.dumps(spec))
    return path, x, y, final


def test_stepwise_trajectories_carry_the_stability_features(tiny):
    x, y, final = learn2pd.trajectories(tiny, [tiny.encode(p) for p in PROMPTS], 8, "stable")
    assert x.shape == (3 * 36, len(learn2pd.STABLE_FEATURES)) and final.shape == (3, 8)
    batch_first_step = x[:3 * 8]  # step 0 of all three rows: no previous step
    assert torch.all(batch_first_step[:, 8:11] == 0)
    assert torch.all(x[3 * 8:, 10] == 1)  # later steps have one
    assert torch.equal(x[:, :8], learn2pd.collect(tiny, [tiny.encode(p) for p in PROMPTS], 8, context=True)[0])


def test_on_policy_trajectories_label_against_the_target(tiny):
    prompts = [tiny.encode(p) for p in PROMPTS]
    _, _, final = learn2pd.trajectories(tiny, prompts, 8, "stable")
    model = learn2pd.fit_mlp(*learn2pd.trajectories(tiny, prompts, 8, "stable")[:2], steps=5)
    everything = learn2pd.Learned(0, 8, model, 0.0, None)  # accept 0: one step commits every position
    x, y, out = learn2pd.trajectories(tiny, prompts, 8, "stable", everything, target=final)
    assert x.shape == (3 * 8, len(learn2pd.STABLE_FEATURES))  # one step per row
    assert torch.equal(y, (out == final).double().flatten())  # committed x0 vs the stepwise output
    wrong = final.clone()  # flip the label of row 0's first position
    wrong[0, 0] = out[0, 0] + 1 if y[0] == 1 else out[0, 0]
    _, y2, _ = learn2pd.trajectories(tiny, prompts, 8, "stable", learn2pd.Learned(0, 8, model, 0.0, None), target=wrong)
    assert y2[0] == 1 - y[0] and torch.equal(y2[1:], y[1:])
    logistic = learn2pd.Learned(0, 8, [0.0, 0.0, 0.0, 0.0, 10.0], 0.5, None)  # any kind of policy; records its states
    x3, _, _ = learn2pd.trajectories(tiny, prompts, 8, "stable", logistic, target=final)
    assert torch.equal(x3, x)


def test_stable_filter_loads_is_deterministic_and_batch_invariant(tiny, tmp_path):
    path, *_ = _stable_filter(tiny, tmp_path)
    kw = dict(method="learn2pd", max_new_tokens=10, filter=str(path), accept=0.6)
    for extra in ({}, {"budget": 0.5, "distinct": 2}):
        batch = decodelab.generate_batch(tiny, PROMPTS, **kw, **extra)
        again = decodelab.generate_batch(tiny, PROMPTS, **kw, **extra)
        assert [g.token_ids for g in batch] == [g.token_ids for g in again]
        for prompt, row in zip(PROMPTS, batch):
            alone = decodelab.generate(tiny, prompt, **kw, **extra)
            assert alone.token_ids == row.token_ids and alone.stats.forward_passes <= 10
    strict = decodelab.generate(tiny, PROMPTS[0], **{**kw, "accept": 1.0, "max_new_tokens": 8})
    assert strict.token_ids == decodelab.generate(tiny, PROMPTS[0], method="llada", max_new_tokens=8).token_ids
    budget = decodelab.generate(tiny, PROMPTS[0], **{**kw, "accept": 0.0, "budget": 1e-9, "max_new_tokens": 8})
    assert budget.stats.forward_passes == 8  # a zero budget leaves only the loop's top-1
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, "features": list(learn2pd.MLP_FEATURES)}))
    with pytest.raises(ValueError, match="cannot read the learn2pd filter"):
        decodelab.generate(tiny, PROMPTS[0], **kw)


def test_step_features_see_the_previous_step_of_the_same_rule():
    rule = learn2pd.Learned(0, 2, learn2pd.MLP(len(learn2pd.STABLE_FEATURES)), 0.5, None)
    logits = torch.tensor([[[3.0, 0.0], [0.0, 3.0]]], dtype=torch.float64)
    masked = torch.ones(1, 2, dtype=torch.bool)
    first = rule.features(Step(torch.full((1, 2), 0.9, dtype=torch.float64), logits.argmax(-1), masked, 0, [], logits))
    assert torch.all(first[..., 8:11] == 0)
    flipped = logits.flip(-1)
    second = rule.features(Step(torch.full((1, 2), 0.9, dtype=torch.float64), flipped.argmax(-1), masked, 1, [], flipped))
    assert second[0, :, 8].tolist() == [0.0, 0.0] and second[0, :, 10].tolist() == [1.0, 1.0]
    assert torch.all(second[0, :, 9] > 1.0)


def test_distinct_drops_same_token_neighbours_of_a_better_commit():
    out = torch.tensor([[True, True, True, False, True], [True, False, True, False, False]])
    x0 = torch.tensor([[5, 5, 5, 7, 5], [4, 4, 4, 0, 0]])
    score = torch.tensor([[0.9, 0.95, 0.8, 0.99, 0.7], [0.9, 0.99, 0.8, 0.0, 0.0]], dtype=torch.float64)
    got = learn2pd.distinct_commits(out, x0, score, radius=1)
    # row 0: 1 kept (best), 0 and 2 share its token one away; 4 is three away. Row 1: 0 and 2 are two apart.
    assert got.tolist() == [[False, True, False, False, True], [True, False, True, False, False]]
    assert learn2pd.distinct_commits(out, x0, score, radius=2)[1].tolist() == [True, False, False, False, False]
    assert torch.equal(learn2pd.distinct_commits(out, torch.arange(10).view(2, 5), score, radius=4), out)


def test_gate_commits_only_unchanged_argmaxes_or_very_confident_ones():
    rule = learn2pd.Learned(0, 3, [0.0, 0.0, 0.0, 0.0, 10.0], accept=0.5, eos_id=None, gate=0.99)  # filter: all
    logits = torch.tensor([[[9.0, 0.0], [2.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    masked = torch.ones(1, 3, dtype=torch.bool)

    def step(lg):
        p = torch.softmax(lg, -1)
        return Step(p.amax(-1), lg.argmax(-1), masked, 0, [], lg)

    assert rule.select(step(logits)).tolist() == [[True, False, False]]  # first step: only p(x0) ≥ 0.99
    changed = logits.clone()
    changed[0, 2] = torch.tensor([1.0, 0.0])  # position 2's argmax flips, position 1's stays
    assert rule.select(step(changed)).tolist() == [[True, True, False]]
    assert rule.select(step(changed)).tolist() == [[True, True, True]]  # now 2 is unchanged too


def test_the_fitting_command_runs_on_policy_rounds(tmp_path, capsys):
    from pathlib import Path

    init = Path(decodelab.load("builtin:tasks-diffusion").model.name_or_path) / "learn2pd-mlp.json"
    out = tmp_path / "stable.json"
    learn2pd.main(["--n", "1", "--kind", "stable", "--rounds", "1", "--policy-accept", "0.9", "--distinct", "1",
                   "--init", str(init), "--out", str(out)])
    assert '"round": 1' in capsys.readouterr().out
    spec = learn2pd.load_filter(out)
    assert spec["kind"] == "stable" and "--rounds 1" in spec["command"] and 7 * 24 <= spec["positions"] < 7 * 300  # ≥ one full step per row, < the stepwise run


def test_the_shipped_stable_filter_loads_offline_and_parallelises():
    lm = decodelab.load("builtin:tasks-diffusion")
    items = [decodelab.tasks.make(t, 1, 0)[0] for t in ("copy", "latin4")]
    kw = dict(method="learn2pd", filter="stable", accept=0.8, budget=0.15, distinct=2, max_new_tokens=24)
    gens = decodelab.generate_batch(lm, [it.prompt for it in items], **kw)
    for it, g in zip(items, gens):
        assert g.stats.forward_passes < 8 and lm.mask_token_id not in g.token_ids
        assert g.token_ids == decodelab.generate(lm, it.prompt, **kw).token_ids
