"""bench/reproduce.py pathological: the success rule per problem on hand-made
predictions, every (problem, method) config valid, and one tiny run per method end
to end (data -> train.py -> best model over the test split -> report)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sophia.training.cli import merge_options, parse_sets, read_config

_PATH = Path(__file__).resolve().parents[1] / "bench" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce_pathological", _PATH)
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _last_frame(values, width=1):
    """Sequences of 3 frames whose last frame holds ``values[i]`` (NaN before it)."""
    arrays = []
    for value in values:
        a = np.full((3, width), np.nan, np.float32)
        a[-1] = value
        arrays.append(a)
    return arrays


def test_numbers_are_right_within_0_04_of_the_target():
    targets = _last_frame([0.5, 0.5, 0.2, 0.9])
    outputs = _last_frame([0.53, 0.45, 0.2, 0.96])        # 0.03 right; 0.05 and 0.06 wrong
    right = reproduce.right_answers("real", 1, outputs, targets)
    assert right.tolist() == [True, False, True, False]


def test_bits_are_right_on_the_targets_side_of_one_half():
    targets = _last_frame([1.0, 1.0, 0.0, 0.0])
    outputs = _last_frame([0.51, 0.49, 0.2, 0.7])
    assert reproduce.right_answers("binary", 1, outputs, targets).tolist() == [True, False, True, False]


def test_classes_are_right_when_the_argmax_is_the_target():
    eye = np.eye(4)
    targets = _last_frame([eye[0], eye[2], eye[3]], width=4)
    outputs = _last_frame([[0.3, 0.2, 0.25, 0.25], [0.1, 0.5, 0.4, 0.0], [0.0, 0.0, 0.1, 0.2]], width=4)
    assert reproduce.right_answers("class", 1, outputs, targets).tolist() == [True, False, True]


def test_memorization_needs_every_one_of_its_last_k_answers_right():
    k, eye = 3, np.eye(3)
    target = eye[[2, 2, 0, 1, 1]]                          # blank, blank, then the string 0 1 1
    all_right = target * 0.8 + 0.05
    one_wrong = all_right.copy()
    one_wrong[3] = eye[2]                                  # the second symbol of the string
    early_wrong = all_right.copy()
    early_wrong[0] = eye[0]                                # a blank frame, before the answer
    right = reproduce.right_answers("class", k, [all_right, one_wrong, early_wrong], [target] * 3)
    assert right.tolist() == [True, False, True]


@pytest.mark.parametrize("method", reproduce.METHODS)
@pytest.mark.parametrize("problem", sorted(reproduce.PATHOLOGICAL))
def test_every_problem_and_method_gives_valid_options(problem, method):
    import train
    T = 100
    sets = reproduce.pathological_sets(problem, method, T)
    overrides = {**read_config(reproduce.PATHOLOGICAL_CONFIGS / f"{method}.toml"), **parse_sets(sets)}
    model, options = merge_options(train.OPTIONS, overrides)
    model.validate()
    options.validate()
    task, generator_options, kind, _ = reproduce.PATHOLOGICAL[problem]
    longest = reproduce.longest_sequence(task, T)
    from sophia.data.tasks import TASKS
    lengths = [len(x) for x, _, _ in TASKS[task].generate(np.random.default_rng(1), 40, T=T,
                                                          **generator_options)]
    assert max(lengths) <= longest                          # one window holds a whole sequence
    assert options.step_size == longest
    input_tj, target_tk, _ = next(TASKS[task].generate(np.random.default_rng(0), 1, T=T, **generator_options))
    assert (model.input_dim, model.target_dim) == (input_tj.shape[1], target_tk.shape[1])
    if method == "hf":
        assert options.update_type == "hessian_free" and options.window_size == longest
        assert model.unit_type == "rnn" and model.init_type == "sparse"
        assert options.frames_per_epoch == reproduce.HF_STEPS_PER_EPOCH * options.batch_size * longest
    else:
        assert options.window_size == 2 * longest
    assert options.loss_type == {"real": "l2", "binary": "bce", "class": "xent"}[kind]
    if (method, problem) == ("hf", "memorization_5"):
        assert options.batch_size == 32                     # the pair's own config


def test_an_hf_epoch_is_five_steps_of_the_batch_in_force():
    def per_epoch(problem, user_sets=()):
        sets = dict(s.split("=") for s in reproduce.pathological_sets(problem, "hf", 100, user_sets))
        return int(sets["frames_per_epoch"])
    assert per_epoch("adding") == 5 * 1000 * 110             # configs/pathological/hf.toml
    assert per_epoch("memorization_5") == 5 * 32 * 100       # its pair config's batch
    assert per_epoch("adding", ["batch_size=300"]) == 5 * 300 * 110


def test_seeds_parse_and_bad_seeds_are_refused(capsys):
    args = reproduce.build_parser().parse_args(["pathological", "--problem", "xor", "--method", "hf",
                                                "--seeds", "4,7"])
    assert args.seeds == [4, 7] and args.T == 100
    with pytest.raises(SystemExit):
        reproduce.build_parser().parse_args(["pathological", "--problem", "xor", "--method", "hf",
                                             "--seeds", "one"])
    assert "--seeds takes comma-separated integers, got 'one'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.build_parser().parse_args(["pathological", "--problem", "xor", "--method", "hf",
                                             "--dev_tolerance", "0"])
    assert "expected a number above 0, got '0'" in capsys.readouterr().err


TINY = ["--train", "24", "--dev", "4", "--test", "6", "--max_epochs", "1",
        "--set", "net_width=4", "--set", "batch_size=4", "--set", "frames_per_epoch=60",
        "--set", "compile_mode=FAST_COMPILE"]


@pytest.mark.parametrize("method, problem, seeds", [("hf", "adding", "3"),
                                                    ("lstm_adam", "memorization_5", "1,2"),
                                                    ("rnn_nesterov", "xor", "5")])
def test_tiny_run_end_to_end_reports_success_per_seed(tmp_path, capsys, method, problem, seeds):
    T = 12 if problem == "memorization_5" else 11
    extra = {"hf": ["--set", "hf_max_cg_iters=3"],
             "rnn_nesterov": ["--stop", "dev", "--dev_tolerance", "0.2"]}.get(method, [])
    report = reproduce.main(["pathological", "--problem", problem, "--T", str(T), "--method", method,
                             "--seeds", seeds, "--work", str(tmp_path)] + TINY + extra)
    runs = report["runs"]
    assert [r["seed"] for r in runs] == [int(s) for s in seeds.split(",")]
    for run in runs:
        assert "error" not in run, run
        assert run["test"] == 6 and 0 <= run["wrong"] <= 6
        assert run["success"] == (run["wrong"] < 0.001 * 6) and run["all_right"] == (run["wrong"] == 0)
        assert run["sequences_total"] > 0 and run["train_seconds"] >= 0 and run["wall_seconds"] >= 0
        assert "sequences_to_criterion" in run
        ws = tmp_path / f"seed{run['seed']}" / "ws"
        _, outputs, targets = reproduce.evaluate_split(ws, tmp_path / f"seed{run['seed']}" / "data")
        kind, scored = reproduce.PATHOLOGICAL[problem][2:]
        assert run["wrong"] == int((~reproduce.right_answers(kind, scored, outputs, targets)).sum())
    successes = sum(r["success"] for r in runs)
    assert report["success_rate"] == f"{successes}/{len(runs)}"
    assert report["all_right_rate"] == f"{sum(r['all_right'] for r in runs)}/{len(runs)}"
    assert report["allowed_wrong_fraction"] == reproduce.SUCCESS_WRONG_FRACTION
    assert json.loads((tmp_path / "report.json").read_text()) == report
    out = capsys.readouterr().out
    assert f"{problem} T={T} {method}: success {successes}/{len(runs)} seeds" in out
    if method == "hf":
        assert "HF step on the scan engine" in out
    if method == "lstm_adam":           # first-order default: the training streak
        frames = reproduce.target_frames("memorization", {"bits": 5}, T)
        assert frames == T                # memorization has a target at every frame
        assert report["stop"] == "streak"
        assert report["limits"][-2:] == [f"target_train_streak={5000 * frames}", "streak_tolerance=0.3"]
    else:
        tolerance = 0.2 if method == "rnn_nesterov" else reproduce.DEV_TOLERANCE["real"]
        assert report["stop"] == "dev"
        assert report["limits"][-1] == f"target_dev_max_error={tolerance:g}"


def test_a_set_streak_replaces_the_default_stop():
    args = reproduce.build_parser().parse_args(
        ["pathological", "--problem", "adding", "--method", "lstm_adam", "--stop", "streak",
         "--set", "streak_tolerance=0.02"])
    limits, measure, criterion = reproduce.stop_limits(args, "adding", {}, "real")
    assert limits == ["target_train_streak=5000"] and (measure, criterion) == ("train_streak", 5000)
    args.set = ["target_train_streak=300"]
    assert reproduce.stop_limits(args, "adding", {}, "real") == (
        ["streak_tolerance=0.04"], "train_streak", 300)


@pytest.mark.parametrize("method, flags, message", [
    ("hf", ["--stop", "streak"], "--stop streak needs a first-order method"),
    ("lstm_adam", ["--dev_tolerance", "0.2"], "pass --stop dev with it")])
def test_a_stop_that_cannot_apply_is_refused(tmp_path, method, flags, message):
    with pytest.raises(SystemExit, match=message):
        reproduce.main(["pathological", "--problem", "adding", "--T", "11", "--method", method,
                        "--work", str(tmp_path)] + TINY + flags)


def test_success_is_fewer_than_the_allowed_fraction_wrong_and_all_right_at_zero():
    assert reproduce.SUCCESS_WRONG_FRACTION == 0.001                   # the authors' HF stop
    assert [reproduce.succeeded(w, 2560, 0.001) for w in (0, 2, 3)] == [True, True, False]
    assert [reproduce.succeeded(w, 1000, 0.001) for w in (0, 1)] == [True, False]   # below, not at
    assert [reproduce.succeeded(w, 2560, 0.0) for w in (0, 1)] == [True, False]
    args = reproduce.build_parser().parse_args(["pathological", "--problem", "xor", "--method", "hf"])
    assert args.allowed_wrong_fraction == 0.001


@pytest.mark.parametrize("value", ["1", "-0.1", "some"])
def test_an_allowed_wrong_fraction_outside_0_to_1_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        reproduce.build_parser().parse_args(["pathological", "--problem", "xor", "--method", "hf",
                                             "--allowed_wrong_fraction", value])
    assert f"expected a number in [0, 1), got {value!r}" in capsys.readouterr().err


def test_hfs_dev_stop_reads_as_many_dev_answers_as_the_test_scores(tmp_path):
    def counts(*argv):
        args = reproduce.build_parser().parse_args(["pathological", "--work", str(tmp_path), *argv])
        return reproduce.resolve_pathological(args).counts
    assert counts("--problem", "adding", "--method", "hf") == dict(train=20_000, dev=2560, test=2560)
    assert counts("--problem", "permutation", "--method", "hf")["dev"] == 1000
    assert counts("--problem", "adding", "--method", "hf", "--dev", "300")["dev"] == 300
    assert counts("--problem", "adding", "--method", "lstm_adam")["dev"] == 256
