"""Does llguidance's mask computation release the GIL? (What the overlap in batched.py relies on.)

`python -m decodelab.constraints.gil_check`: a pure-Python counting loop runs on the main thread for a
second, alone and then beside a second thread that calls, in a loop, one of:

- `time.sleep` (releases the GIL, uses no CPU) and a torch matmul (releases the GIL, uses a core): the
  references for "released";
- pure Python and `LLMatcher.validate_tokens` (llguidance work that holds the GIL): the references for
  "held";
- `LLMatcher.unsafe_compute_mask_ptr`, `LLMatcher.unsafe_compute_mask_ptr_with_draft_token` and
  `LLExecutor.unsafe_compute_mask_ptr_with_draft_token` (the calls batched.py and matcher.py make), on a JSON-suite grammar (constraints/json_suite.py) and
  builtin:pyco's tokenizer.

It prints the counting loop's speed beside each as a share of its speed alone. A call that releases the
GIL leaves the loop about the share the matmul leaves it (below 1 only because the second thread takes
CPU, on a busy machine more so); one that holds it leaves about what pure Python leaves. The source says
the same: llguidance's python_ext/src/llmatcher.rs wraps the mask fill in `py.detach`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def _count(seconds: float) -> int:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
    return n


def run(seconds: float = 1.0, model: str = "builtin:pyco") -> dict:
    import torch
    from llguidance import LLMatcher

    from .. import load
    from .batched import executor
    from .json_suite import CASES
    from .spec import compile_constraint

    lm = load(model)
    _, _, schema, example = CASES[3]
    grammar = compile_constraint(lm, {"json_schema": schema})
    matcher = LLMatcher(grammar.tokenizer, grammar.text, log_level=0)
    words = (grammar.tokenizer.vocab_size + 31) // 32
    bitmask = torch.zeros((8, words), dtype=torch.int32)
    doc = lm.encode(json.dumps(example))
    chain = doc[: matcher.validate_tokens(doc)][:7]  # a valid draft: 8 masks per call
    pool, a = executor(), torch.randn(256, 256)

    def matmul():
        for _ in range(4):
            a @ a

    def python():
        sum(range(2000))

    calls = {
        "time.sleep (releases, no CPU)": lambda: time.sleep(0.0002),
        "torch matmul (releases)": matmul,
        "pure Python (holds)": python,
        "LLMatcher.validate_tokens (holds)": lambda: matcher.validate_tokens(doc),
        "LLMatcher.unsafe_compute_mask_ptr": lambda: matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), words * 4),
        "LLMatcher.unsafe_compute_mask_ptr_with_draft_token": lambda: matcher.unsafe_compute_mask_ptr_with_draft_token(
            bitmask.data_ptr(), words * 4, chain),
        "LLExecutor.unsafe_compute_mask_ptr_with_draft_token": lambda: pool.unsafe_compute_mask_ptr_with_draft_token(
            [(matcher, 0, chain)], bitmask.data_ptr(), words * 4, 8),
    }
    alone = _count(seconds)
    shares = {}
    for name, call in calls.items():
        stop = threading.Event()

        def loop(call=call, stop=stop):
            while not stop.is_set():
                call()

        worker = threading.Thread(target=loop)
        worker.start()
        shares[name] = round(_count(seconds) / alone, 3)
        stop.set()
        worker.join()
    return {"seconds": seconds, "torch_threads": torch.get_num_threads(), "shares": shares}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m decodelab.constraints.gil_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each count (default 1)")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    result = run(args.seconds)
    for name, share in result["shares"].items():
        print(f"{share:5.2f}  beside {name}")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
