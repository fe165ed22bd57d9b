"""bench/hf_step.py: how a step's calls are split into its pieces, and a tiny run."""
import pytest

from bench_modules import load_bench


@pytest.fixture(scope="module")
def hf_step():
    return load_bench("hf_step")


def test_a_steps_calls_split_into_gradient_cg_backtracking_rho_and_line_search(hf_step):
    events = ([("grad", 1.0)] + [("gv", 0.5)] * 4 + [("cost", 0.1)] * 3 + [("gv", 0.25)]
              + [("cost", 0.2)] * 2)
    assert hf_step.step_pieces(events) == {
        "gradient": (1, 1.0), "cg products": (4, 2.0), "backtracking": (3, pytest.approx(0.3)),
        "rho product": (1, 0.25), "line search": (2, pytest.approx(0.4))}


def test_a_step_accepted_at_alpha_one_has_no_line_search_calls(hf_step):
    events = [("grad", 1.0), ("gv", 0.5), ("gv", 0.5), ("cost", 0.1), ("gv", 0.5)]
    pieces = hf_step.step_pieces(events)
    assert pieces["line search"] == (0, 0) and pieces["backtracking"] == (1, 0.1)
    assert pieces["cg products"] == (2, 1.0) and pieces["rho product"] == (1, 0.5)


def test_the_quick_run_prints_the_ratio_and_each_piece(hf_step, capsys):
    hf_step.main(["--quick"])
    out = capsys.readouterr().out
    assert "G·v / gradient" in out and "G·v / forward" in out
    step = [line for line in out.splitlines() if line.startswith("step 0:")]
    assert step and all(piece in step[0] for piece in
                        ("gradient", "cg products", "backtracking", "rho product", "line search"))
