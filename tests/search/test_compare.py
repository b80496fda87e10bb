"""The quality comparison's metrics on hand-made inputs (the run itself is documented in docs/SEARCH.md)."""

from decodelab.search.compare import function_source, method_grid, rep2, syntax_valid

PROMPT = 'def f(x):\n    """Double x."""'


def test_function_is_cut_at_its_end_and_at_the_last_complete_line():
    assert function_source(PROMPT, "\n    return 2 * x\n\ndef g(") == PROMPT + "\n    return 2 * x\n"
    assert function_source(PROMPT, "\n    return 2 * x\n    y = (") == PROMPT + "\n    return 2 * x"
    assert syntax_valid(PROMPT, "\n    return 2 * x\n\nprint(")
    assert not syntax_valid(PROMPT, "\n    return (2 * x\n\n")


def test_rep2_and_grid():
    assert rep2([1, 2, 1, 2, 1]) == 0.5  # bigrams 12 21 12 21: two unique of four
    assert rep2([1, 2, 3]) == 0.0 and rep2([1]) == 0.0
    widths = {m: p.get("num_beams") or p.get("num_samples") or p.get("top_k") for _, m, p in method_grid(3)}
    assert widths["beam"] == widths["contrastive"] == widths["best_of_n"] == 3
