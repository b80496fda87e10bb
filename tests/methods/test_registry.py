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


def test_options_a_method_cannot_honour_are_refused_in_one_line_before_it_runs():
    """`refuses`: a grammar or token healing on a method that cannot apply it is a one-line error naming
    the option and why, raised where every method starts (engine.run_method) — the refusing set is exactly
    the one below, so a method that starts ignoring an option shows up here."""
    import decodelab
    from decodelab.errors import UserError

    from fakes import tiny_lm

    lm = tiny_lm("llama", seed=0)
    table = decodelab.methods()
    refusing = {option: {n for n, m in table.items() if option in m.refuses}
                for option in ("constraint", "token_healing")}
    assert refusing == {"constraint": {"cntp", "phi", "self_infill", "superposed"},
                        "token_healing": {"self_infill", "superposed"}}
    for option, value in (("constraint", {"regex": "a+"}), ("token_healing", True)):
        for name in sorted(refusing[option]):
            with pytest.raises(UserError, match=f"^{name} does not support {option} \\(") as error:
                decodelab.generate(lm, "ab", method=name, max_new_tokens=2, **{option: value})
            assert "\n" not in str(error.value)


def test_a_rule_across_a_methods_parameters_is_checked_with_the_rest():
    """`check=`: pld's n-gram sizes and cntp's entropy band, refused when the parameters are checked."""
    import decodelab
    from decodelab.errors import UserError

    table = decodelab.methods()
    with pytest.raises(UserError, match="min_ngram_size .4. must not exceed max_ngram_size .3."):
        table["pld"].check_params({"min_ngram_size": 4})
    with pytest.raises(UserError, match="entropy_high > entropy_low"):
        table["cntp"].check_params({"entropy_low": 2.0, "entropy_high": 1.0})
    table["cntp"].check_params({"entropy_low": 0.5, "entropy_high": 1.0})
