"""The registry's promises about parameters: nothing a user sets is silently ignored."""

import pytest


def test_a_sampling_parameter_a_method_does_not_apply_is_refused_not_ignored():
    """superposed (raw logits), autodeco (its own T̂ and P̂) and deal (deterministic search) declare the
    sampling parameters they do not apply: another value than the default is a one-line error naming
    the parameter; the default itself, given explicitly, is accepted."""
    import decodelab
    from decodelab.methods.registry import methods

    from fakes import tiny_lm

    lm = tiny_lm("llama", seed=0)
    table = methods()
    cases = {"superposed": {"top_p": 0.5, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
             "autodeco": {"top_k": 5, "min_p": 0.1, "temperature": 0.5},
             "deal": {"temperature": 0.7, "top_p": 0.9}}
    for method, bad in cases.items():
        for name, value in bad.items():
            assert name in table[method].ignores
            with pytest.raises(ValueError, match=f"does not use {name} ") as error:
                decodelab.generate(lm, "ab", method=method, max_new_tokens=2, **{name: value})
            assert "\n" not in str(error.value)
    decodelab.generate(lm, "ab", method="deal", max_new_tokens=2, temperature=0.0, top_p=1.0)
    assert all(not info.ignores for name, info in table.items() if name not in cases)
