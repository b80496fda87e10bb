"""The benchmark protocol (Spec-Bench's, made strict).

Warm-up; every prompt runs every method, interleaved (A B C, A B C …) so machine drift hits all
alike; R repeats, median time per prompt; prefill included; fixed seeds; batch 1. Baselines in the
same run: decodelab `greedy` and transformers' greedy. Exactness: each lossless method's tokens are
compared with greedy's in full (temperature 0) or its sampled distribution with `sample`'s (two-sample
chi-square, α = 1e-3) when sampling.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from .. import __version__, inputs
from ..api import generate
from ..constraints.timing import grammar_timing
from ..errors import UserError
from ..methods import methods
from ..model import LM
from .peers import PEERS, hf_generate
from .suites import Suite

ALPHA = 1e-3


@dataclass
class Entry:
    """One column of the benchmark: a decodelab method with params, or a transformers peer."""

    label: str
    method: str
    params: dict = field(default_factory=dict)
    lossless: bool = True

    @property
    def is_peer(self) -> bool:
        return self.method in PEERS


def make_entries(names: list[str], params: dict[str, dict], peers: bool, has_draft: bool,
                 batch_size: int = 1) -> list[Entry]:
    """greedy first (the baseline), then the requested methods, then the peers (at batch > 1 only
    transformers' batched greedy: its assisted generation and prompt lookup refuse batches)."""
    table = methods()
    shared = params.get("*", {})
    order = ["greedy"] + [n for n in names if n != "greedy"]
    entries = []
    for name in order:
        if name not in table:
            raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(table))}")
        merged = {**shared, **params.get(name, {})}
        if name == "greedy" and name not in params:  # the speed baseline stays argmax under a shared temperature
            merged.pop("temperature", None)
        table[name].check_params(merged)  # fail before running anything
        entries.append(Entry(name, name, merged, table[name].lossless))
    if peers:
        for peer in PEERS if batch_size == 1 else ["hf:greedy"]:
            if peer != "hf:assisted" or has_draft:
                entries.append(Entry(peer, peer, dict(shared)))
    return entries


def machine_info(lm: LM) -> dict:
    import transformers

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "decodelab": __version__,
            "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch.")}
    if lm.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(lm.device)
    if lm.backend == "llamacpp":  # the GGUF's weight type (q8_0 computes in float32, lm.dtype says so)
        info["gguf_weights"] = lm.model.gguf_dtype
    return info


def _peak_memory_mb(lm: LM) -> float:
    if lm.device.type == "cuda":
        return torch.cuda.max_memory_allocated(lm.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def run_one(lm: LM, entry: Entry, ids: list[int], max_new_tokens: int, seed: int, draft: LM | None,
            constraint: dict | None = None) -> dict:
    """Time one generation (under `constraint` when given: constraints/bench.py); returns a raw record."""
    _sync_reset(lm)
    t0 = time.perf_counter()
    if entry.is_peer:
        tokens, stats = hf_generate(lm, ids, max_new_tokens, entry.method, draft, entry.params), None
    else:
        extra = {"constraint": constraint} if constraint else {}
        with grammar_timing() if constraint else nullcontext() as timer:
            g = generate(lm, ids, method=entry.method, max_new_tokens=max_new_tokens, seed=seed, **entry.params,
                         **extra)
        tokens, stats = g.token_ids, g.stats
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    wall = time.perf_counter() - t0
    rec = {"new_tokens": len(tokens), "wall_time_s": wall, "tokens_per_s": len(tokens) / wall,
           "token_ids": tokens, "peak_memory_mb": round(_peak_memory_mb(lm), 1)}
    if stats is not None:
        rec.update(steps=stats.steps, forward_passes=stats.forward_passes, decode_tokens=stats.decode_tokens,
                   draft_forward_passes=stats.draft_forward_passes, mean_accepted=stats.mean_accepted,
                   draft_time_s=stats.draft_time_s)
    if constraint and not entry.is_peer:
        from ..constraints.bench import record_fields

        rec.update(record_fields(lm, g, constraint, timer))
    return rec


def run_batch(lm: LM, entry: Entry, rows: list[list[int]], max_new_tokens: int, seed: int,
              max_batch: int | None = None) -> dict:
    """Time prompts through `generate_batch` (one batched forward per step over at most `max_batch` rows,
    refilled as rows finish); a raw record whose token_ids is the list of rows and whose counts are the
    whole run's. The transformers peer runs consecutive groups of `max_batch` rows."""
    from ..api import generate_batch

    _sync_reset(lm)
    t0 = time.perf_counter()
    if entry.is_peer:
        from .peers import hf_generate_batch

        size = max_batch or len(rows)
        rows_out = [r for lo in range(0, len(rows), size)
                    for r in hf_generate_batch(lm, rows[lo : lo + size], max_new_tokens, entry.params)]
        wall = time.perf_counter() - t0
        new = sum(len(r) for r in rows_out)
        return {"new_tokens": new, "wall_time_s": wall, "tokens_per_s": new / wall, "batch_size": len(rows),
                "token_ids": rows_out, "peak_memory_mb": round(_peak_memory_mb(lm), 1)}
    gens = generate_batch(lm, rows, method=entry.method, max_new_tokens=max_new_tokens, seed=seed,
                          max_batch=max_batch, **entry.params)
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    wall = time.perf_counter() - t0
    new = sum(len(g.token_ids) for g in gens)
    steps = sum(g.stats.steps for g in gens)  # per row: its decode steps and the tokens they emitted
    decode = sum(g.stats.decode_tokens for g in gens)
    return {"new_tokens": new, "wall_time_s": wall, "tokens_per_s": new / wall, "batch_size": max_batch or len(rows),
            "token_ids": [g.token_ids for g in gens], "peak_memory_mb": round(_peak_memory_mb(lm), 1),
            "steps": steps, "decode_tokens": decode,
            "mean_accepted": decode / steps if steps else 0.0,
            "row_latency_s": sorted(g.stats.wall_time_s for g in gens)}


def _sync_reset(lm: LM) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
        torch.cuda.reset_peak_memory_stats(lm.device)


def first_mismatch(got: list[int], want: list[int]) -> int | None:
    """First differing position over the full sequences (a length difference counts)."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def two_sample_pvalue(a: list, b: list) -> float:
    """Chi-square test of homogeneity between two samples of outcomes (cells pooled when rare)."""
    from scipy.stats import chi2_contingency

    ca, cb = Counter(a), Counter(b)
    keys = sorted(set(ca) | set(cb), key=lambda k: -(ca[k] + cb[k]))
    big = [k for k in keys if ca[k] + cb[k] >= 10]
    rows = [[ca[k] for k in big], [cb[k] for k in big]]
    rest = [k for k in keys if k not in big]
    if rest:
        rows[0].append(sum(ca[k] for k in rest))
        rows[1].append(sum(cb[k] for k in rest))
    if len(rows[0]) < 2:
        return 1.0
    return float(chi2_contingency(rows).pvalue)


def distribution_check(lm: LM, entry: Entry, prompts: list[list[int]], seeds: int, draft: LM | None,
                       constraints: list[dict | None] | None = None) -> float:
    """p-value that the method's first 3 sampled tokens follow `sample`'s distribution (min over prompts),
    both under prompt i's constraint `constraints[i]` when given."""
    pvalues = []
    sample_params = dict(entry.params)
    sample_params = {k: v for k, v in sample_params.items() if k in methods()["sample"].params}
    for ids, constraint in zip(prompts, constraints or [None] * len(prompts)):
        extra = {"constraint": constraint} if constraint else {}
        ours = [tuple(_tokens(lm, entry, ids, 3, 10_000 + s, draft, extra)) for s in range(seeds)]
        ref = [tuple(generate(lm, ids, method="sample", max_new_tokens=3, seed=20_000 + s,
                              **sample_params, **extra).token_ids) for s in range(seeds)]
        pvalues.append(two_sample_pvalue(ours, ref))
    return min(pvalues)


def _tokens(lm, entry, ids, n, seed, draft, extra=None):
    if entry.is_peer:
        torch.manual_seed(seed)
        return hf_generate(lm, ids, n, entry.method, draft, entry.params)
    return generate(lm, ids, method=entry.method, max_new_tokens=n, seed=seed, **entry.params,
                    **(extra or {})).token_ids


def prompt_ids(lm: LM, suite: Suite, max_new_tokens: int) -> list[tuple[str, list[int], int]]:
    """(id, token ids, max_new_tokens) per prompt, keeping prompt + generation inside the context."""
    out = []
    for p in suite.prompts:
        n = min(p.max_new_tokens or max_new_tokens, lm.max_length // 2)  # small-context models keep room
        room = lm.max_length - n - 1
        if room < 8:
            raise UserError(f"max_new_tokens={n} leaves no room for a prompt in a {lm.max_length}-token context")
        ids = lm.encode(p.text)[-room:]
        out.append((p.id, inputs.prompt_ids(lm, ids), n))
    return out


def aggregate(records: list[dict], entries: list[Entry], suites: list[str]) -> list[dict]:
    """Per (suite, method) metrics from raw records; speedups relative to decodelab greedy."""
    out = []
    for suite in suites:
        per = {e.label: [r for r in records if r["suite"] == suite and r["method"] == e.label] for e in entries}
        base = _per_prompt_tps(per["greedy"])
        for e in entries:
            if per[e.label]:  # peers have no records on constrained suites
                out.append(_aggregate_one(suite, e, per[e.label], base))
    return out


def _share(recs: list[dict], key: str, total: float) -> float | None:
    """Σ key ÷ total over records that carry the key (a batch's rows share their passes: it has none)."""
    if not total or any(key not in r for r in recs):
        return None
    return round(sum(r[key] for r in recs) / total, 4)


def _per_prompt_tps(recs: list[dict]) -> dict[str, float]:
    by_prompt: dict[str, list[dict]] = {}
    for r in recs:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    return {pid: rs[0]["new_tokens"] / statistics.median(x["wall_time_s"] for x in rs) for pid, rs in by_prompt.items()}


def _aggregate_one(suite: str, e: Entry, recs: list[dict], base: dict[str, float]) -> dict:
    tps = _per_prompt_tps(recs)
    ratios = sorted(tps[p] / base[p] for p in tps if p in base and base[p] > 0)
    mean_tps = statistics.fmean(tps.values()) if tps else 0.0
    base_tps = statistics.fmean(base.values()) if base else 0.0
    with_stats = [r for r in recs if "steps" in r]
    steps = sum(r["steps"] for r in with_stats)
    new = sum(r["new_tokens"] for r in with_stats)
    wall = sum(r["wall_time_s"] for r in with_stats)
    constrained = {}
    if any("valid" in r for r in recs):  # validity, fast-forward and mask time (constraints/bench.py)
        from ..constraints.bench import aggregate as constrained_aggregate

        constrained = constrained_aggregate(recs)
    return {**constrained,
        "suite": suite, "method": e.label, "params": e.params, "lossless": e.lossless,
        "tokens_per_s": round(mean_tps, 3), "speedup": round(mean_tps / base_tps, 4) if base_tps else None,
        "speedup_p25": round(_quantile(ratios, 0.25), 4) if ratios else None,
        "speedup_p75": round(_quantile(ratios, 0.75), 4) if ratios else None,
        "mean_accepted": round(sum(r["decode_tokens"] for r in with_stats) / steps, 4) if steps else None,
        "forward_passes_per_token": _share(with_stats, "forward_passes", new),  # one-row records only
        "draft_time_share": _share(with_stats, "draft_time_s", wall),
        "peak_memory_mb": max((r["peak_memory_mb"] for r in recs), default=None),
        "exact": None, "mismatch": None, "distribution_pvalue": None,
    }


def _quantile(xs: list[float], q: float) -> float:
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
