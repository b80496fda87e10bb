"""`decodelab decode-cost`: milliseconds per greedy decode step of one model, every backend side by side.

Configurations (each a fresh load): the native backend in float32 and bfloat16 as loaded by default
(`pack="auto"`: matmul weights packed for oneDNN where that timed faster on this CPU), with every large weight
packed, and unpacked on torch's `F.linear` (model/native.py `NativeModel.pack`), optionally compiled,
the transformers adapter (decodelab's loop over transformers' forward), and transformers' own
`generate` (greedy, its DynamicCache). Runs are interleaved (A B C …, R times) so machine drift hits
all alike; the figure is the median over repeats of (time of N decode steps) / N, prefill excluded
(for `generate`: (t(N + 1 tokens) − t(1 token)) / N). The machine's load before and after is recorded.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..errors import UserError
from . import machine


@dataclass(frozen=True)
class Config:
    label: str
    backend: str
    dtype: str
    compile: bool = False
    generate: bool = False  # transformers' generate instead of decodelab's session loop
    pack: bool | str = "auto"  # native: load(pack=...) — oneDNN-packed matmul weights, False: torch's F.linear


def default_configs(compile_too: bool) -> list[Config]:
    configs = [Config("native float32", "native", "float32"), Config("native bfloat16", "native", "bfloat16"),
               Config("native float32, all packed", "native", "float32", pack=True),
               Config("native bfloat16, all packed", "native", "bfloat16", pack=True),
               Config("native float32, F.linear (unpacked)", "native", "float32", pack=False),
               Config("native bfloat16, F.linear (unpacked)", "native", "bfloat16", pack=False),
               Config("transformers adapter float32", "transformers", "float32"),
               Config("transformers generate float32", "transformers", "float32", generate=True),
               Config("transformers generate bfloat16", "transformers", "bfloat16", generate=True)]
    if compile_too:
        configs[6:6] = [Config("native float32 compiled", "native", "float32", compile=True),
                        Config("native bfloat16 compiled", "native", "bfloat16", compile=True)]
    return configs


def llamacpp_configs() -> list[Config]:
    """`--backend llamacpp`: decodelab's loop over llama.cpp (model/llamacpp.py) in f32 / bf16 / q8_0 and
    llama.cpp's own greedy loop (the bench's llamacpp:greedy peer), next to the native backend."""
    configs = [Config("native float32", "native", "float32"), Config("native bfloat16", "native", "bfloat16")]
    for dtype in ("float32", "bfloat16", "q8_0"):
        configs.append(Config(f"llamacpp {dtype}", "llamacpp", dtype))
        configs.append(Config(f"llama.cpp own greedy loop {dtype}", "llamacpp", dtype, generate=True))
    return configs


@torch.inference_mode()
def session_ms(lm, ids: list[int], steps: int) -> float:
    """ms per decode step of decodelab's greedy loop over lm.session() (prefill excluded)."""
    session = lm.session()
    x = int(session.forward(ids, last_only=True)[0, -1].argmax())
    t0 = time.perf_counter()
    for _ in range(steps):
        x = int(session.forward([x], last_only=True)[0, -1].argmax())
    _sync(lm)
    return (time.perf_counter() - t0) / steps * 1e3


@torch.inference_mode()
def generate_ms(lm, ids: list[int], steps: int) -> float:
    """ms per decode step of transformers' generate (greedy, no EOS stop), prefill subtracted; on the
    llamacpp backend, of llama.cpp's own greedy loop (prefill excluded)."""
    if lm.backend == "llamacpp":
        from ..model.llamacpp import plain_greedy

        return plain_greedy(lm.model, ids, steps + 1, timed_steps=steps) / steps * 1e3
    x = torch.tensor([ids], device=lm.device)

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=lm.pad_token_id)
        _sync(lm)
        return time.perf_counter() - t0

    return (timed(steps + 1) - timed(1)) / steps * 1e3


def _load(model: str | None, c: Config, device: str):
    from ..model import load

    if c.backend == "native":
        return load(model, device=device, dtype=c.dtype, backend="native", compile=c.compile, pack=c.pack)
    return load(model, device=device, dtype=c.dtype, backend=c.backend, compile=c.compile)


def _sync(lm) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def measure(model: str | None, configs: list[Config], prompt: str, steps: int, repeats: int,
            device: str = "cpu") -> dict:
    lms = {c: _load(model, c, device) for c in configs}
    ids = next(iter(lms.values())).encode(prompt)
    steps = min(steps, next(iter(lms.values())).max_length - len(ids) - 2)
    before, start = machine.snapshot(), machine.sample()
    times: dict[Config, list[float]] = {c: [] for c in configs}
    for rep in range(repeats + 1):  # the first round warms up (and compiles)
        for c, lm in lms.items():
            ms = generate_ms(lm, ids, steps) if c.generate else session_ms(lm, ids, steps)
            if rep:
                times[c].append(ms)
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    base = statistics.median(times[configs[0]])
    rows = [{"config": c.label, "backend": c.backend, "dtype": c.dtype, "compiled": c.compile,
             "ms_per_token": round(statistics.median(t), 3), "tokens_per_s": round(1e3 / statistics.median(t), 1),
             "vs_first": round(statistics.median(t) / base, 3), "all_ms": [round(x, 3) for x in t],
             "pack_choice": lms[c].state.get("pack_choice")}
            for c, t in times.items()]
    return {"model": model or "builtin:pyco", "prompt_tokens": len(ids), "steps": steps, "repeats": repeats,
            "threads": torch.get_num_threads(), "load": load_info, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"model {result['model']}, {result['prompt_tokens']}-token prompt, {result['steps']} decode steps, "
             f"median of {result['repeats']}, {result['threads']} threads",
             "", "| configuration | ms / token | tokens/s | × first row's time |", "|---|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:.0f} | {r['vs_first']:.2f} |"
              for r in result["rows"]]
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="default builtin:pyco")
    p.add_argument("--steps", type=int, default=128, help="decode steps timed per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time the native backend with torch.compile")
    p.add_argument("--backend", default=None, choices=("llamacpp",),
                   help="llamacpp: time llama.cpp (decodelab's loop and llama.cpp's own) next to native instead")
    p.add_argument("--prompt", default="import os\n\n\ndef main():")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")


def run(args) -> None:

    if args.steps < 1 or args.repeats < 1:
        raise UserError("--steps and --repeats must be ≥ 1")
    machine.set_threads(args.threads)
    configs = llamacpp_configs() if args.backend == "llamacpp" else default_configs(args.compile)
    result = measure(args.model, configs, args.prompt, args.steps, args.repeats, args.device)
    machine.emit(result, markdown(result), args.json)
