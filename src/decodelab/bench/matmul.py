"""`python -m decodelab.bench.matmul`: a model's weight matmuls per step, torch's F.linear vs oneDNN-packed.

What a decode or verify step of the native backend costs is mostly its weight matmuls (for
`builtin:pyco`: 4 per layer × 8 layers + the LM head). This times exactly those matrices at 1…32 rows
(one row = a one-token step, 5 rows = a 4-token draft verified) in float32 and bfloat16, through
`F.linear` (torch's default CPU route: MKL's GEMM / GEMV for float32) and through oneDNN with weights
prepacked once (`torch.ops.mkldnn._linear_pointwise`, what model/native.py's `NativeModel.pack` uses).
Rounds are interleaved and the median is reported; the machine's load before and after is recorded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import machine


def weights(model: str | None) -> list[torch.Tensor]:
    """The native model's matmul weights, unpacked, in step order (q/k/v, o, gate/up, down per layer; head)."""
    from ..model import load
    from ..model.native import from_transformers

    native = from_transformers(load(model, backend="transformers").model, pack=False)
    mats = [getattr(block, name) for block in native.layers for name in ("wqkv", "wo", "w_gate_up", "w_down")]
    return [w.detach() for w in [*mats, native.head]]


def _time_ms(fn, inner: int = 10) -> float:
    """ms per call of fn, over `inner` calls after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner * 1e3


@torch.inference_mode()
def measure(model: str | None, rows: list[int], repeats: int) -> dict:
    from ..model.native import PACK_ROWS, linear

    dense32 = weights(model)
    routes = {}
    for dtype in (torch.float32, torch.bfloat16):
        dense = [w.to(dtype) for w in dense32]
        routes[f"F.linear {str(dtype)[6:]}"] = (dense, dtype)
        routes[f"oneDNN packed {str(dtype)[6:]}"] = ([torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)
                                                       for w in dense], dtype)
    before, start = machine.snapshot(), machine.sample()
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for m in rows:
            for label, (mats, dtype) in routes.items():
                xs = {k: torch.randn(m, k, dtype=dtype) for k in {w.shape[1] for w in mats}}
                times.setdefault((label, m), []).append(_time_ms(lambda xs=xs, mats=mats: [
                    linear(xs[w.shape[1]], w) for w in mats]))
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    table = {label: {m: round(statistics.median(times[(label, m)]), 3) for m in rows} for label in routes}
    return {"model": model or "builtin:pyco", "matrices": len(dense32), "threads": torch.get_num_threads(),
            "repeats": repeats, "rows": rows, "ms": table, "load": load_info}


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"{result['model']}: the {result['matrices']} weight matmuls of one step, ms (median of "
             f"{result['repeats']}), {result['threads']} threads; rows = tokens in the forward",
             "", "| route | " + " | ".join(f"{m} row{'s' if m > 1 else ''}" for m in rows) + " |",
             "|---|" + "---:|" * len(rows)]
    lines += [f"| {label} | " + " | ".join(f"{ms[m]:.2f}" for m in rows) + " |" for label, ms in result["ms"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m decodelab.bench.matmul", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default builtin:pyco")
    p.add_argument("--rows", default="1,2,5,8,16,32")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    args = p.parse_args(argv)
    machine.set_threads(args.threads)
    result = measure(args.model, [int(r) for r in args.rows.split(",")], args.repeats)
    machine.emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
