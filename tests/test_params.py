"""One typed SamplingParams, validated once at the boundary; user errors vs bugs.

Every bad sampling parameter is one `UserError` (a ValueError) naming it and its range, through the API,
the CLI (exit 2, one line) and the bench; `method="greedy"` with a temperature says which method samples;
`sampling=SamplingParams(...)` gives exactly what the keywords give. A ValueError raised while generating
is a bug, not the user's input: the CLI says "internal error" (exit 3) instead of blaming the user.
"""

import pytest
from test_cli import _assert_one_line_error, _run, model_dir  # noqa: F401  (fixture)

import decodelab
from decodelab import SamplingParams, UserError
from decodelab.cli import main

from fakes import tiny_lm

LM_ = tiny_lm("llama", seed=8)
BAD = [("temperature", -1), ("top_k", -2), ("top_k", 1.5), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 2),
       ("typical_p", 0), ("epsilon_cutoff", 1.0), ("eta_cutoff", -0.1), ("repetition_penalty", 0),
       ("presence_penalty", 3), ("frequency_penalty", -2.5), ("no_repeat_ngram_size", -1),
       ("temperature", float("nan")), ("top_p", "0.9"), ("top_k", True)]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_value_is_one_user_error_naming_it(name, value):
    with pytest.raises(UserError, match=name):
        SamplingParams(**{name: value})
    with pytest.raises(UserError, match=name):
        decodelab.generate(LM_, "ab", method="sample", max_new_tokens=2, **{name: value})
    with pytest.raises(UserError, match=name):
        decodelab.generate_batch(LM_, ["ab", "c"], method="pld", max_new_tokens=2, **{name: value})


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="top_q"):
        SamplingParams.from_dict({"top_q": 0.5})
    with pytest.raises(UserError, match="top_q"):
        decodelab.generate(LM_, "ab", method="sample", top_q=0.5)
    with pytest.raises(UserError, match="top_q"):
        decodelab.next_token_probs(LM_, "ab", top_q=0.5)


def test_greedy_with_a_temperature_names_the_sampling_methods():
    with pytest.raises(UserError, match="method 'sample'"):
        decodelab.generate(LM_, "ab", method="greedy", temperature=0.7)
    assert decodelab.generate(LM_, "ab", method="greedy", temperature=0, max_new_tokens=3).token_ids


def test_sampling_object_equals_keywords():
    kw = dict(temperature=0.9, top_p=0.8, min_p=0.05, repetition_penalty=1.2)
    a = decodelab.generate(LM_, "ab", method="sample", seed=3, max_new_tokens=8, sampling=SamplingParams(**kw))
    b = decodelab.generate(LM_, "ab", method="sample", seed=3, max_new_tokens=8, **kw)
    assert a.token_ids == b.token_ids and a.params == b.params
    with pytest.raises(UserError, match="top_p given both"):
        decodelab.generate(LM_, "ab", method="sample", sampling=SamplingParams(**kw), top_p=0.5)
    with pytest.raises(UserError, match="SamplingParams"):
        decodelab.generate(LM_, "ab", method="sample", sampling={"top_p": 0.5})
    assert SamplingParams(temperature=1e-9).greedy  # below vLLM's epsilon: greedy


@pytest.mark.parametrize("argv,words", [
    (["--temperature", "0.7"], ("greedy", "sample")),
    (["--method", "sample", "--top-p", "1.5"], ("top_p",)),
    (["--method", "sample", "--top-k", "-3"], ("top_k",)),
    (["--method", "sample", "-p", "min_p=2"], ("min_p",)),
    (["--method", "sample", "-p", "top_q=2"], ("top_q",)),
    (["--method", "sample", "--repetition-penalty", "0"], ("repetition_penalty",)),
])
def test_cli_sampling_errors_are_one_line(capsys, model_dir, argv, words):  # noqa: F811
    code, out, err = _run(capsys, ["generate", "ab", "--model", model_dir, *argv])
    _assert_one_line_error(code, err, *words)


def test_bench_sampling_error_is_one_line(capsys, model_dir, tmp_path):  # noqa: F811
    code, out, err = _run(capsys, ["bench", "--model", model_dir, "--methods", "sample", "-p", "sample:top_p=7",
                                   "--no-peers", "--limit", "1", "--out", str(tmp_path)])
    _assert_one_line_error(code, err, "top_p")


def test_a_bug_while_generating_is_an_internal_error_not_a_user_error(capsys, model_dir, monkeypatch):  # noqa: F811
    from decodelab.methods import autoregressive

    def broken(ctx, session, rows=None):
        raise ValueError("an index went wrong deep inside")
    monkeypatch.setattr(autoregressive, "prefill", broken)
    code = main(["generate", "ab", "--model", model_dir, "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 3 and "internal error" in err and len(err.strip().splitlines()) == 1
