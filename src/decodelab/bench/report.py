"""Outputs of a benchmark run: results.json, report.md and PNG plots (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = json.loads((Path(__file__).parent / "schema.json").read_text())


def _fmt(x, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _exact_cell(a: dict) -> str:
    if not a["lossless"]:
        return "n/a (lossy)"
    if a["exact"] is None:
        return "—"
    if a["exact"]:
        return "yes" if a["distribution_pvalue"] is None else f"yes (p={a['distribution_pvalue']:.3f})"
    m = a["mismatch"]
    if m is None:
        return f"**NO** (p={a['distribution_pvalue']:.2g})"
    return f"**NO** ({m['prompt_id']} @ {m['position']})"


def markdown(results: dict) -> str:
    """A table per suite, readable at a glance."""
    m, c = results["machine"], results["config"]
    lines = [f"# decodelab bench — {c['model']}", "",
             f"Machine: {m['processor']}, {m.get('cpu_count')} cores, {m.get('threads', m.get('cpu_count'))} torch "
             f"threads, {m['device']} {m['dtype']}, backend {m.get('backend', 'transformers')}"
             f"{' (GGUF ' + m['gguf_weights'] + ')' if m.get('gguf_weights') else ''}; "
             f"torch {m['torch']}, transformers {m['transformers']}, decodelab {m['decodelab']}.",
             _load_line(m.get("load")),
             f"Command: `{c['command']}`", "",
             f"Protocol: {c['repeats']} repeats (median time per prompt), 1 warm-up, methods interleaved per "
             f"prompt, prefill included, batch {c.get('batch_size', 1)}, temperature {c['temperature']}. Speedup = mean tokens/s ÷ "
             "decodelab greedy's mean tokens/s in the same run; spread = 25th–75th percentile of per-prompt "
             "speedups.", ""]
    lines += [f"Skipped {method}: {why}." for method, why in c.get("skipped", {}).items()]
    lines += [""] if c.get("skipped") else []
    for suite in c["suites"]:
        rows = [a for a in results["aggregates"] if a["suite"] == suite]
        n = len({r["prompt_id"] for r in results["records"] if r["suite"] == suite})
        lines += [f"## {suite} ({n} prompts)", "",
                  "| method | tokens/s | speedup | spread | τ | target fwd/token | draft share | exact |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for a in rows:
            spread = f"{_fmt(a['speedup_p25'])}–{_fmt(a['speedup_p75'])}"
            lines.append(f"| {a['method']} | {_fmt(a['tokens_per_s'], '.1f')} | {_fmt(a['speedup'])}× | {spread} | "
                         f"{_fmt(a['mean_accepted'])} | {_fmt(a['forward_passes_per_token'])} | "
                         f"{_fmt(a['draft_time_share'])} | {_exact_cell(a)} |")
        lines.append("")
        if any(a.get("validity") is not None for a in rows):  # a constrained suite (e.g. json)
            from ..constraints.bench import table

            lines += table(rows)
    return "\n".join(lines)


def plots(results: dict, out: Path) -> list[Path]:
    """speedup.png (per method per suite) and tau_vs_speedup.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = results["config"]["suites"]
    methods = list(dict.fromkeys(a["method"] for a in results["aggregates"]))
    table = {(a["suite"], a["method"]): a for a in results["aggregates"]}
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.8 * len(methods)), 4.5))
    width = 0.8 / len(suites)
    for i, s in enumerate(suites):
        ys = [(table.get((s, m)) or {}).get("speedup") or 0 for m in methods]  # peers skip constrained suites
        ax.bar([j + i * width for j in range(len(methods))], ys, width, label=s)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks([j + width * (len(suites) - 1) / 2 for j in range(len(methods))], methods, rotation=30, ha="right")
    ax.set_ylabel("speedup over decodelab greedy (×)")
    ax.set_title(f"{results['config']['model']} — {results['machine']['device']}")
    ax.legend(title="suite")
    fig.tight_layout()
    paths = [out / "speedup.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = dict(zip(suites, "osD^vP*X"))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for a in results["aggregates"]:
        if a["mean_accepted"] is not None and a["speedup"] is not None:
            ax.scatter(a["mean_accepted"], a["speedup"], color=colors[a["method"]], marker=markers[a["suite"]])
    for m in dict.fromkeys(a["method"] for a in results["aggregates"] if a["mean_accepted"] is not None):
        ax.scatter([], [], color=colors[m], marker="o", label=m)
    for s, mk in markers.items():
        ax.scatter([], [], color="gray", marker=mk, label=f"suite: {s}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("τ (tokens per target forward pass)")
    ax.set_ylabel("speedup (×)")
    ax.set_title("acceptance vs speedup")
    fig.tight_layout()
    paths.append(out / "tau_vs_speedup.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def write(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(markdown(results) + "\n")
    return [out / "results.json", out / "report.md", *plots(results, out)]


def _load_line(load: dict | None) -> str:
    """The machine's load around the run (bench/machine.py), flagged when it was busy."""
    if not load:
        return "Machine load: not recorded."
    b, a = load["before"], load["after"]
    flag = " **BUSY: timings unreliable.**" if load["busy"] else " (idle)"
    return (f"Machine load: 1-min load average {b.get('load_avg_1m')} before, {a.get('load_avg_1m')} after; other "
            f"processes' CPU share {b.get('others_cpu_share')} before, {load.get('during_others_cpu_share')} during, "
            f"{a.get('others_cpu_share')} after{flag}")
