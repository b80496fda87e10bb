"""CLI fuzz test (issue 17): random and adversarial input through `decodelab generate` and `decodelab bench`.

Property: every run exits 0, or exits non-zero with exactly one line on stderr that is a user error
(not "internal error") — never a traceback. Cases are drawn from fixed pools with a fixed seed
(`SEED`, one `random.Random` per case, so a failing case reruns alone: `-k "generate and 17"`);
the number of cases is bounded. Most run in-process through `decodelab.cli.main`; a few run as
subprocesses for what only a real process has (bytes on stdin, bytes in argv).
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys

import pytest
from test_first_hour import _extra_token_tokenizer

from decodelab.cli import main
from decodelab.methods import methods

from fakes import byte_tokenizer, tiny_lm

SEED = 1717
N_GENERATE = 48
N_BENCH = 12

PROMPTS = ["def f(x):", "", " ", "<eos>", "<pad>", "<|extra|>", "x = <|extra|> + 1", "<|endoftext|>", "<s></s>",
           "\x00\x01\x02", "\x1b[31mred\x1b[0m", "\r\n\t\x0b\x0c", "é漢字🙂", "\udcff", "a\udc80b", "x" * 3000,
           "-p", "--json", "\u202e\ufeff", "-", "-", "abcabcabcabc"]
STDIN = [b"", b"\xff\xfe\xfd", b"print(1)\n", b"\x00" * 10, "é".encode() * 400, b"\xc3", b"ok <eos>", b"x" * 5000]
GOOD_SAMPLING = ["temperature=0.5", "temperature=0", "top_k=3", "top_p=0.9", "min_p=0.05", "repetition_penalty=1.2",
                 "no_repeat_ngram_size=3", "typical_p=0.9", "temperature=1e-300", "repetition_penalty=1e-300",
                 "temperature=1e300"]
BAD_VALUES = ["nan", "inf", "-inf", "-1", "1e309", "true", "", "abc", "999999999999", "auto", "{model}", "1,2"]
# each field: (good choices, bad choices); a case corrupts 0–2 fields and keeps the rest valid,
# so the adversarial prompts and stdin reach tokenisation and generation, not just argument parsing
GENERATE_FIELDS = {
    "model": (["{model}", "{model}", "{extra}"], ["nope-model", "/nonexistent/x", "builtin:nope", "my/model/x",
                                                  "{model}/config.json", "not a model!", "{root}"]),
    "max-new-tokens": (["1", "2", "3", "4"], ["0", "-5", "x", "1.5", ""]),
    "seed": (["0", "7", "123"], ["-1", "18446744073709551616", "x"]),
    "stop": (["\n", "x", "<eos>", "\udcff"], [""]),
    "device": (["cpu", "cpu:0"], ["cuda", "cuda:7", "mps", "tpu", "", "meta", "CPU"]),
    "compare": (["greedy", "pld", "sample"], ["nope", ""]),
    "backend": (["auto", "native", "transformers"], ["tpu", ""]),
    "dtype": (["float32", "bf16"], ["int3", ""]),
    "temperature": (["0", "0.8", "1e-300"], ["-1", "nan", "x"]),
    "draft": (["{draft}", "{model}", "{extra}"], ["nope-draft", "builtin:pyco-draft", "{root}"]),
    "method": ([], ["nope", "GREEDY", "", "llada"]),
    "param": ([], ["temperature", "=", "==1", "top_k=1=2"]),
    "flag": ([], ["--frobnicate", "--max-new-tokens", "-p"]),
}
DEVICES = GENERATE_FIELDS["device"][0] + GENERATE_FIELDS["device"][1]
DRAFTS = GENERATE_FIELDS["draft"][0] + GENERATE_FIELDS["draft"][1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name, seed, tok in (("model", 8, None), ("draft", 9, None), ("extra", 8, _extra_token_tokenizer())):
        tiny_lm("llama", seed=seed).model.save_pretrained(root / name)
        (tok or byte_tokenizer()).save_pretrained(root / name)
        out[name] = str(root / name)
    (root / "suite.jsonl").write_text(json.dumps({"prompt": "def f(x):"}) + "\n" + json.dumps({"prompt": "<eos>"}))
    (root / "bad.jsonl").write_text("{not json\n")
    (root / "empty.jsonl").write_text("")
    (root / "huge.jsonl").write_text(json.dumps({"prompt": "x = 1\n" * 300, "max_new_tokens": 2}) + "\n")
    out.update(suite=str(root / "suite.jsonl"), bad=str(root / "bad.jsonl"), empty=str(root / "empty.jsonl"),
               huge=str(root / "huge.jsonl"), out=str(root / "out"), root=str(root))
    return out


def _fill(arg: str, paths: dict) -> str:
    for key, value in paths.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _maybe(rng: random.Random, p: float, *args: str) -> list[str]:
    return list(args) if rng.random() < p else []


def _causal_methods() -> list[str]:
    return sorted(n for n, m in methods().items() if getattr(m, "kind", "causal") == "causal")


def generate_case(i: int) -> tuple[list[str], bytes | None]:
    """One random `generate` command line (with {placeholders}) and the bytes on stdin, if any."""
    rng = random.Random(SEED * 1000 + i)
    bad = set(rng.sample(sorted(GENERATE_FIELDS), rng.choice([0, 0, 1, 1, 2])))
    method = rng.choice(_causal_methods())
    prompt = rng.choice(PROMPTS)
    argv = ["generate", prompt, "--method", rng.choice(GENERATE_FIELDS["method"][1]) if "method" in bad else method]
    for name in ("model", "max-new-tokens"):
        good, wrong = GENERATE_FIELDS[name]
        argv += [f"--{name}", rng.choice(wrong if name in bad else good)]
    for name in ("seed", "stop", "device", "compare", "backend", "dtype", "temperature"):
        good, wrong = GENERATE_FIELDS[name]
        if name in bad or rng.random() < 0.3:
            argv += [f"--{name}", rng.choice(wrong if name in bad else good)]
    if "draft" in bad or ("draft" in methods()[method].specs and rng.random() < 0.7):
        argv += ["--draft", rng.choice(GENERATE_FIELDS["draft"][1] if "draft" in bad else GENERATE_FIELDS["draft"][0])]
    own = sorted(methods()[method].params)
    good = GOOD_SAMPLING + [f"{k}={p.default}" for k, p in methods()[method].specs.items()
                            if isinstance(p.default, (bool, int, float)) or k == "draft"]
    for _ in range(rng.choice([0, 1, 1, 2])):
        argv += ["-p", f"{rng.choice(own)}={rng.choice(BAD_VALUES)}" if "param" in bad else rng.choice(good)]
    if "param" in bad:
        argv += ["-p", rng.choice(GENERATE_FIELDS["param"][1])]
    argv += ["--json"] * (rng.random() < 0.4) + ["--allow-pickle"] * (rng.random() < 0.1)
    argv += ["--trust-remote-code"] * (rng.random() < 0.1)
    if "flag" in bad:
        argv.append(rng.choice(GENERATE_FIELDS["flag"][1]))
    return argv, rng.choice(STDIN) if prompt == "-" else None


BENCH_FIELDS = {
    "model": (["{model}"], ["nope-model", "{root}", "builtin:nope"]),
    "suite": (["{suite}", "{suite}", "{huge}"], ["{bad}", "{empty}", "/missing.jsonl", "nope"]),
    "methods": (["greedy,pld", "pld", "speculative", "tree,greedy", "greedy,sample", "pld,pld"],
                ["nope", "", ",,,", "llada"]),
    "repeats": (["1"], ["0", "x", "-2"]),
    "max-new-tokens": (["2", "3"], ["0", "x"]),
    "limit": (["1"], ["0", "-1", "x"]),
    "out": (["{out}"], ["/proc/nope/out", "{suite}"]),
    "param": (["pld.max_ngram_size=2", "temperature=0.5", "pld.num_draft_tokens=3"],
              ["pld.num_draft_tokens=0", "nope.x=1", "temperature=nan", "x", "draft=nope"]),
    "draft": (["{draft}", "auto"], ["nope-draft", "builtin:pyco-draft"]),
    "device": (["cpu"], ["cuda:3", "tpu"]),
    "dist-seeds": (["5"], ["0", "-3"]),
}


def bench_case(i: int) -> list[str]:
    rng = random.Random(SEED * 1000 + 500 + i)
    bad = set(rng.sample(sorted(BENCH_FIELDS), rng.choice([0, 1, 1, 2])))
    argv = ["bench", "--no-peers"] + ["--json"] * (rng.random() < 0.5)
    for name, (good, wrong) in BENCH_FIELDS.items():
        optional = name in ("param", "draft", "device")
        if name in bad or not optional or rng.random() < 0.3:
            flag = "-p" if name == "param" else f"--{name}"
            argv += [flag, rng.choice(wrong if name in bad else good)]
    return argv


def _check(argv: list[str], code, out: str, err: str) -> None:
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if code == 0:
        if "--json" in argv and "--help" not in argv:
            json.loads(out.strip().splitlines()[-1])  # the last line of stdout is one JSON object
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (argv, err)
    assert "internal error" not in lines[0], (argv, lines[0])
    assert "error" in lines[0], (argv, lines[0])


def _in_process(argv, capfd, monkeypatch, stdin: bytes | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("i", range(N_GENERATE))
def test_generate_fuzz(i, paths, capfd, monkeypatch):
    argv, stdin = generate_case(i)
    argv = [_fill(a, paths) for a in argv]
    _check(argv, *_in_process(argv, capfd, monkeypatch, stdin))


@pytest.mark.parametrize("i", range(N_BENCH))
def test_bench_fuzz(i, paths, capfd, monkeypatch):
    argv = [_fill(a, paths) for a in bench_case(i)]
    monkeypatch.chdir(paths["root"])
    _check(argv, *_in_process(argv, capfd, monkeypatch))


def test_fuzz_reaches_both_outcomes(paths, capfd, monkeypatch):
    """The pools are not all-errors: a fixed share of cases must succeed (else the fuzz tests nothing)."""
    codes = []
    for i in range(0, N_GENERATE, 3):
        argv, stdin = generate_case(i)
        codes.append(_in_process([_fill(a, paths) for a in argv], capfd, monkeypatch, stdin)[0])
    assert 0 in codes and any(c != 0 for c in codes), codes


# What the fuzz found (each crashed with a traceback before its fix), kept as fixed cases.
FOUND = [
    ["bench", "--model", "{model}", "--suite", "{suite}", "--limit", "0", "--no-peers", "--out", "{out}"],  # IndexError
    ["generate", "x", "--model", "{model}", "--method", "sample", "-p", "temperature=1e-300"],  # NaN probabilities
    ["generate", "abcabc", "--model", "{model}", "--method", "sample", "-p", "repetition_penalty=1e-300"],  # NaN
    ["bench", "--model", "{model}", "--suite", "{suite}", "--methods", "speculative", "-p", "draft={draft}",
     "--no-peers", "--out", "{out}", "--max-new-tokens", "2", "--repeats", "1", "--json"],  # greedy rejected 'draft'
]


@pytest.mark.parametrize("argv", FOUND)
def test_found_by_fuzz(argv, paths, capfd, monkeypatch):
    argv = [_fill(a, paths) for a in argv]
    code, out, err = _in_process(argv, capfd, monkeypatch)
    _check(argv, code, out, err)
    if "--limit" not in argv:
        assert code == 0, err


@pytest.mark.parametrize("argv,stdin", [
    ([b"generate", b"-", b"--model", "{model}", b"--max-new-tokens", b"2", b"--stop", b"\xff\xfe"],
     b"\xff\xfe invalid utf-8"),
])
def test_subprocess_fuzz(argv, stdin, paths):
    """A real process: bytes on stdin and in argv (invalid UTF-8 in argv becomes lone surrogates in
    sys.argv, which the in-process cases feed directly)."""
    args = [a if isinstance(a, bytes) else _fill(a, paths).encode() for a in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable.encode(), b"-m", b"decodelab.cli", *args], input=stdin,
                          capture_output=True, env=env, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    _check([a.decode("utf-8", "replace") for a in args], proc.returncode, proc.stdout.decode("utf-8", "replace"), err)
    assert proc.returncode != 0 and "stdin is not UTF-8" in err, err
