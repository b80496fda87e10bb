"""The official `openai` client against a live `decodelab serve` app on loopback.

Every expected output is computed in-process with the public API (`decodelab.generate`) on the same
model, so these tests check the server's plumbing, not hard-coded strings.
"""

from __future__ import annotations

import json

import pytest

import decodelab

from serve_utils import CHAT_TEMPLATE, live_server

openai = pytest.importorskip("openai")

PROMPT = "def f(x):"


def _extra(obj) -> dict:
    """decodelab's block of a response (the openai client keeps unknown fields)."""
    return obj.model_extra["decodelab"]


def test_greedy_completion_equals_generate(live, served_lm):
    _, client = live
    ref = decodelab.generate(served_lm, PROMPT, max_new_tokens=12)
    resp = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=12, temperature=0)
    assert resp.choices[0].text == ref.text
    assert _extra(resp)["choices"][0]["token_ids"] == ref.token_ids
    assert resp.usage.completion_tokens == len(ref.token_ids)
    assert resp.usage.prompt_tokens == len(served_lm.encode(PROMPT))
    assert resp.choices[0].finish_reason == {"eos": "stop"}.get(ref.finish_reason, ref.finish_reason)


def test_chat_uses_the_chat_template(live, served_lm):
    _, client = live
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = "<system>be brief\n<user>hi\n<assistant>"
    assert served_lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    ref = decodelab.generate(served_lm, text, max_new_tokens=10)
    resp = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == ref.text
    assert resp.usage.prompt_tokens == len(served_lm.encode(text))


def test_streaming_with_usage_matches_non_streaming(live, served_lm):
    _, client = live
    ref = decodelab.generate(served_lm, PROMPT, max_new_tokens=20)
    chunks = list(client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # pieces, not one blob
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None


def test_chat_streaming(live, served_lm):
    _, client = live
    ref = decodelab.generate(served_lm, "<user>yo\n<assistant>", max_new_tokens=8)
    chunks = list(client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "yo"}],
                                                 max_tokens=8, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert all(c.usage is None for c in chunks)  # include_usage not asked


def test_n_and_seed_reproducible(live, served_lm):
    _, client = live
    args = dict(model="tiny-llama", prompt="hello", max_tokens=8, temperature=5.0, n=3, seed=7)
    first, second = client.completions.create(**args), client.completions.create(**args)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in second.choices]
    refs = [decodelab.generate(served_lm, "hello", method="sample", max_new_tokens=8, seed=7 + i, temperature=5.0)
            for i in range(3)]
    assert [c["token_ids"] for c in _extra(first)["choices"]] == [r.token_ids for r in refs]
    assert len(set(texts)) > 1  # choice i uses seed 7 + i


def test_stop_sequence(live, served_lm):
    _, client = live
    full = decodelab.generate(served_lm, PROMPT, max_new_tokens=16).text
    stop = full[5:7]
    assert stop and full.find(stop) >= 0
    resp = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=16, stop=[stop])
    assert resp.choices[0].text == full[: full.find(stop)]
    assert resp.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("method,params", [("pld", {"num_draft_tokens": 4}), ("jacobi", {"block_size": 4})])
def test_method_from_extra_body_is_lossless(live, served_lm, method, params):
    _, client = live
    ref = decodelab.generate(served_lm, "abcabcabcabc", max_new_tokens=16)
    resp = client.completions.create(model="tiny-llama", prompt="abcabcabcabc", max_tokens=16,
                                     extra_body={"method": method, "method_params": params})
    info = _extra(resp)
    assert info["method"] == method
    assert info["choices"][0]["token_ids"] == ref.token_ids
    assert info["choices"][0]["stats"]["forward_passes"] >= 1


def test_token_healing_through_the_server_equals_the_api(live, served_lm):
    """`token_healing` as an extra: the text equals `decodelab.generate(..., token_healing=True)`'s (greedy
    and beam, streamed or not), a method that refuses healing is a 400 naming it and the server goes on,
    and logprobs with healing are a 400."""
    _, client = live
    for prompt in ("hello wor", "def f(x):\n  "):
        for method in ("greedy", "beam"):
            ref = decodelab.generate(served_lm, prompt, method=method, max_new_tokens=10, token_healing=True)
            assert ref.token_ids != decodelab.generate(served_lm, prompt, method=method, max_new_tokens=10).token_ids \
                or prompt == "hello wor"
            extra = {"method": method, "token_healing": True}
            resp = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=10, temperature=0,
                                             extra_body=extra)
            assert resp.choices[0].text == ref.text and _extra(resp)["choices"][0]["token_ids"] == ref.token_ids
            pieces = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=10, temperature=0,
                                               stream=True, extra_body=extra)
            assert "".join(c.choices[0].text for c in pieces if c.choices) == ref.text
    with pytest.raises(openai.BadRequestError, match="token_healing"):
        client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=4, temperature=0.5,
                                  extra_body={"method": "superposed", "token_healing": True})
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=4, logprobs=2,
                                  extra_body={"token_healing": True})
    assert client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=2).choices[0].text is not None


def test_unknown_field_is_400_naming_it(live):
    _, client = live
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=2, extra_body={"guided_json": {}})
    assert "guided_json" in err.value.body["message"]


def test_bad_parameter_is_400_and_the_server_goes_on(live, served_lm):
    _, client = live
    bad = [{"top_k": -1}, {"method": "nope"}, {"method": "pld", "method_params": {"num_draft_tokens": 0}},
           {"method": "pld", "method_params": {"top_k": 3}}, {"method": "speculative",
                                                               "method_params": {"draft": "/etc"}}]
    for extra in bad:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tiny-llama", prompt="x", max_tokens=2, extra_body=extra)
        assert "\n" not in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=10_000)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    ref = decodelab.generate(served_lm, "x", max_new_tokens=3)
    assert client.completions.create(model="tiny-llama", prompt="x", max_tokens=3).choices[0].text == ref.text


def test_response_format_and_structured_outputs_constrain(live, served_lm):
    """The OpenAI / vLLM constraint fields reach decodelab's constraint= and give its output."""
    _, client = live
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    cases = [({"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}},
              {"json_schema": schema}),
             ({"structured_outputs": {"choice": ["yes", "no"]}}, {"choice": ["yes", "no"]}),
             ({"structured_outputs": {"regex": "[0-9]{3}"}, "method": "pld"}, {"regex": "[0-9]{3}"})]
    for extra, constraint in cases:
        ref = decodelab.generate(served_lm, "x", max_new_tokens=24, constraint=constraint)
        resp = client.completions.create(model="tiny-llama", prompt="x", max_tokens=24, extra_body=extra)
        assert resp.choices[0].text == ref.text, extra
    assert resp.choices[0].finish_reason == "stop" and len(resp.choices[0].text) == 3
    assert resp.choices[0].text.isdigit()
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=4,
                                  extra_body={"structured_outputs": {"regex": "("}})
    assert "regex" in err.value.body["message"]


def test_auth(served_lm):
    from decodelab.serve import create_app

    with live_server(create_app(served_lm, api_key="s3cret", max_tokens=8)) as url:
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model="tiny-llama", prompt="x", max_tokens=2)
        right = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert right.completions.create(model="tiny-llama", prompt="x", max_tokens=2).usage.completion_tokens == 2
        assert [m.id for m in right.models.list().data] == ["tiny-llama"]


def test_chat_without_template_is_400():
    from decodelab.serve import create_app

    from fakes import tiny_lm

    lm = tiny_lm("llama")
    assert not getattr(lm.tokenizer, "chat_template", None) and CHAT_TEMPLATE
    with live_server(create_app(lm, max_tokens=8)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}])
        assert "no chat template" in err.value.body["message"]


def test_client_disconnect_cancels_generation(served_lm):
    """A streaming client that goes away: its row stops early, it counts as aborted, the server goes on."""
    import time

    import httpx2
    from prometheus_client.parser import text_string_to_metric_families

    from decodelab.serve import create_app

    def metric(url, name, **labels):
        text = httpx2.get(url + "/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and labels.items() <= s.labels.items())

    with live_server(create_app(served_lm)) as url:
        body = {"prompt": "def f(x):", "max_tokens": 240, "stream": True}
        with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: {")
        deadline = time.monotonic() + 60
        while metric(url, "decodelab:request_success_total", finished_reason="abort") < 1:
            assert time.monotonic() < deadline, "the disconnect was never noticed"
            time.sleep(0.05)
        assert metric(url, "decodelab:generation_tokens_total") < 240
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert client.completions.create(model="tiny-llama", prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_logprobs_completion_and_chat_equal_the_api(live, served_lm):
    """logprobs=k through the openai client: the same numbers as decodelab.generate(logprobs=k), in OpenAI's
    completions and chat shapes (tokens, text offsets, alternatives sorted most likely first)."""
    _, client = live
    ref = decodelab.generate(served_lm, PROMPT, method="pld", max_new_tokens=8, logprobs=2)
    resp = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=8, logprobs=2,
                                     extra_body={"method": "pld"})
    lp = resp.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)  # cached vs full forward: float rounding
    assert "".join(lp.tokens) == resp.choices[0].text or ref.finish_reason == "eos"
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    # OpenAI's completions shape keys alternatives by text: two byte tokens decoding alike share a key
    assert all(1 <= len(alts) <= 2 and max(alts.values()) >= lp.token_logprobs[i] - 1e-6
               for i, alts in enumerate(lp.top_logprobs))
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6, logprobs=True,
                                          top_logprobs=3)
    content = chat.choices[0].logprobs.content
    ids = _extra(chat)["choices"][0]["token_ids"]
    assert len(content) == len(ids)
    prompt = served_lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = decodelab.generate(served_lm, prompt, max_new_tokens=6, logprobs=3)
    assert [c.logprob for c in content] == pytest.approx(want.logprobs, abs=1e-4)
    assert all(len(c.top_logprobs) == 3 for c in content), [len(c.top_logprobs) for c in content]
    assert all(bytes(c.bytes).decode() == c.token for c in content), [(c.bytes, c.token) for c in content]


def test_streamed_logprobs_arrive_with_their_chunks(live, served_lm):
    """stream=true with logprobs: each chunk carries its own tokens' logprobs; together they equal the
    non-streamed numbers, and the text offsets run on across chunks."""
    _, client = live
    ref = decodelab.generate(served_lm, PROMPT, max_new_tokens=10, logprobs=1)
    chunks = list(client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=10, logprobs=1,
                                            stream=True))
    blocks = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(blocks) >= 2
    flat = [lp for b in blocks for lp in b.token_logprobs]
    assert flat == pytest.approx(ref.logprobs, abs=1e-4)
    tokens = [t for b in blocks for t in b.tokens]
    offsets = [o for b in blocks for o in b.text_offset]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    with pytest.raises(openai.BadRequestError, match="logprobs"):  # search methods: not streamed with logprobs
        list(client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=4, logprobs=1, stream=True,
                                       extra_body={"method": "beam"}))


def test_a_streamed_json_response_with_logprobs_equals_the_api(live, served_lm):
    """response_format json_schema, streamed with logprobs (a constrained row of the continuous engine):
    the pieces make `decodelab.generate`'s constrained text, and their logprobs are its logprobs."""
    _, client = live
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    ref = decodelab.generate(served_lm, "x", max_new_tokens=24, constraint={"json_schema": schema}, logprobs=1)
    chunks = list(client.completions.create(
        model="tiny-llama", prompt="x", max_tokens=24, logprobs=1, stream=True,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    json.loads(ref.text)
    flat = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert flat == pytest.approx(ref.logprobs, abs=1e-4)
