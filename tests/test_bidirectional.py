"""Bidirectional layers: the per-sequence reversal, gradients, each half against a
unidirectional net, the option and data checks, offline evaluation, the server's
refusal, and what the backward direction buys on a task whose labels lie ahead."""
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from fake_models import FakeLoader, make_models_dir, running_server
from model_workspaces import OfflineModel, write_workspace
from sophia.data.dataset import Dataset
from sophia.data.make import make_dataset
from sophia.data.writer import DatasetWriter
from sophia.evaluation.evaluate import evaluate
from sophia.graph.bidirectional import backward_time, reversal_index
from sophia.graph.net import Net
from sophia.options import ModelOptions, OptionError, TrainOptions, validate_training
from sophia.serving.client import ServerError, SophiaClient
from sophia.serving.model import fingerprint, load_model
from sophia.serving.paths import ModelLoadError
from sophia.serving.server import Server
from sophia.training.trainer import Trainer
from tests.graph_support import compile_cost, make_net
from tests.test_graph_gradients import directional_check

# Three streams of 7 frames: sequences of unequal length back to back, padding (-1),
# and real-valued times (the clock gate reads them).
TIME_TB = np.array([[0, 1, 2, 0, 1, 2, -1],
                    [0, 1, 2, 3, 4, 5, 6],
                    [0, 0.5, 1.7, 2.0, 0, 0.9, -1]]).T
REVERSED_TB = np.array([[2, 1, 0, 5, 4, 3, 6],
                        [6, 5, 4, 3, 2, 1, 0],
                        [3, 2, 1, 0, 5, 4, 6]]).T


def test_each_sequence_is_reversed_in_place_and_timed_from_its_end():
    s_time_tb = tt.matrix()
    f = th.function([s_time_tb], [reversal_index(s_time_tb), backward_time(s_time_tb)],
                    mode="FAST_COMPILE")
    rev_tb, back_tb = f(TIME_TB)
    np.testing.assert_array_equal(rev_tb, REVERSED_TB)
    np.testing.assert_allclose(back_tb[:, 2], [0, 0.3, 1.5, 2.0, 0, 0.9, 0])
    assert (back_tb[:, 1] == np.arange(7)).all()
    # a window that starts inside a sequence: its first frames form a sequence of their own
    rev_tb, back_tb = f(np.array([[3.0, 4.0, 0.0, 1.0]]).T)
    assert rev_tb.ravel().tolist() == [1, 0, 3, 2] and back_tb.ravel().tolist() == [0, 1, 0, 1]


CONFIGS = {
    "lstm": dict(unit_type="lstm"),
    "gru": dict(unit_type="gru"),
    "rnn": dict(unit_type="rnn"),
    "lstm_clock_layer_norm": dict(unit_type="lstm", learn_clock_params=True, layer_norm=True),
    "rnn_residual_deep": dict(unit_type="rnn", residual_gate=True, net_depth=2),
    "gru_id_embedding": dict(unit_type="gru", learn_id_embedding=True, id_embedding_dim=2),
}


def window(net, time_tb=TIME_TB, seed=1):
    rng = np.random.default_rng(seed)
    frames, batch = time_tb.shape
    o = net.options
    input_tbj = rng.standard_normal((frames, batch, o.input_dim))
    target_tbk = rng.standard_normal((frames, batch, o.target_dim))
    input_tbj[time_tb < 0], target_tbk[time_tb < 0] = 0.0, np.nan            # padding frames
    ids = rng.integers(0, o.num_ids + 1, (frames, batch)).astype("int32")
    return input_tbj, time_tb.astype(net.dtype), ids, target_tbk


@pytest.mark.parametrize("engine", ["scan", None])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_matches_finite_differences(name, engine):
    net = make_net(bidirectional=True, **CONFIGS[name])
    f = compile_cost(net, window=7, step=7, batch=3, engine=engine)
    directional_check(net, f, window(net))


def test_unrolled_equals_scan():
    net = make_net(bidirectional=True, unit_type="gru")
    unrolled = compile_cost(net, window=7, step=7, batch=3, unroll=True)(*window(net))
    looped = compile_cost(net, window=7, step=7, batch=3, engine="scan")(*window(net))
    for got, want in zip(unrolled[3:], looped[3:]):
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)


def unidirectional_twin(net, direction):
    """A unidirectional net of ``net``'s options whose layer 0 has the weights of
    ``direction`` ('' forward, '.backward') of ``net``'s layer 0, and whose output
    layer reads that direction's half of ``net``'s output weights."""
    width = net.options.net_width
    twin = Net(dataclasses.replace(net.options, bidirectional=False), dtype=net.dtype)
    values = net.get_values()
    half = slice(0, width) if direction == "" else slice(width, 2 * width)
    twin_values = {name: (values["output.W"][half] if name == "output.W" else
                          values[name] if name.startswith("output.") else
                          values[name.replace("layer0.", f"layer0{direction}.", 1)])
                   for name in twin.get_values()}
    twin.set_values(twin_values)
    return twin


def runner(net, engine=None):
    """``run(input_tbj, time_tb) -> output_tbk`` of ``f_infer`` over windows of any
    length, from zero stored states."""
    f_infer, v_states = net.compile_infer(window_size=None, mode="FAST_COMPILE", engine=engine)

    def run(input_tbj, time_tb):
        net.reset_states(v_states, batch_size=time_tb.shape[1])
        return f_infer(input_tbj, time_tb, np.zeros(time_tb.shape, "int32"))
    return run


@pytest.mark.parametrize("engine", ["scan", None])
@pytest.mark.parametrize("unit", ["lstm", "gru", "rnn", "lstm_clock"])
def test_each_half_equals_a_unidirectional_net_on_each_sequence(unit, engine):
    """The output of the bidirectional net with the other half's output weights zeroed
    equals a unidirectional net with one direction's weights, run on each sequence
    alone: forward as it is, backward on the reversed sequence with the time to its end."""
    extra = dict(unit_type="lstm", learn_clock_params=True) if unit == "lstm_clock" else dict(unit_type=unit)
    net = make_net(bidirectional=True, **extra)
    run_bidirectional = runner(net, engine)
    input_tbj, time_tb, _, _ = window(net)
    sequences = [(b, t0, t1) for b in range(3) for t0, t1 in _runs(time_tb[:, b]) if time_tb[t0, b] >= 0]
    assert sorted(t1 - t0 for _, t0, t1 in sequences) == [2, 3, 3, 4, 7]
    values = net.get_values()
    for direction in ("", ".backward"):
        run_twin = runner(unidirectional_twin(net, direction), engine)
        zeroed = dict(values, **{"output.W": values["output.W"].copy()})
        zeroed["output.W"][slice(3, 6) if direction == "" else slice(0, 3)] = 0.0
        net.set_values(zeroed)
        got_tbk = run_bidirectional(input_tbj, time_tb)
        net.set_values(values)
        for b, t0, t1 in sequences:
            x_t1j, time_t1 = input_tbj[t0:t1, b:b + 1], time_tb[t0:t1, b:b + 1]
            if direction:
                x_t1j, time_t1 = x_t1j[::-1], (time_t1[-1] - time_t1)[::-1]
            expected_t1k = run_twin(np.ascontiguousarray(x_t1j), np.ascontiguousarray(time_t1))
            expected_t1k = expected_t1k[::-1] if direction else expected_t1k
            np.testing.assert_allclose(got_tbk[t0:t1, b], expected_t1k[:, 0], atol=1e-10, rtol=0)


def _runs(time_t):
    """(start, stop) of each sequence of a stream (a reset frame up to the next)."""
    starts = [t for t in range(len(time_t)) if t == 0 or time_t[t] <= 0] + [len(time_t)]
    return list(zip(starts[:-1], starts[1:]))


def test_parameter_names_keep_the_unidirectional_ones_and_add_backward_ones():
    uni = Net(ModelOptions(input_dim=2, target_dim=1, net_width=3, unit_type="gru"))
    bi = Net(ModelOptions(input_dim=2, target_dim=1, net_width=3, unit_type="gru", bidirectional=True))
    assert list(uni.v_params) == ["layer0.W_x", "layer0.W_h", "layer0.b", "layer0.h0",
                                  "layer1.W_x", "layer1.W_h", "layer1.b", "layer1.h0",
                                  "output.W", "output.b"]
    backward = [n for n in bi.v_params if ".backward." in n]
    assert sorted(set(bi.v_params) - set(backward)) == sorted(uni.v_params)
    assert backward == ["layer0.backward.W_x", "layer0.backward.W_h", "layer0.backward.b",
                        "layer0.backward.h0", "layer1.backward.W_x", "layer1.backward.W_h",
                        "layer1.backward.b", "layer1.backward.h0"]
    shapes = {n: v.get_value().shape for n, v in bi.v_params.items()}
    assert shapes["layer1.W_x"] == (6, 9) and shapes["output.W"] == (6, 1)   # 2 x net_width in
    assert bi.state_widths() == uni.state_widths()          # only the forward direction stores


@pytest.mark.parametrize("overrides, message", [
    (dict(unit_type="fc"), "bidirectional needs a recurrent unit_type"),
    (dict(batch_norm=True), "bidirectional and batch_norm are exclusive"),
])
def test_model_options_that_cannot_be_bidirectional(overrides, message):
    with pytest.raises(OptionError, match=message):
        ModelOptions(bidirectional=True, **overrides).validate()


def test_step_size_must_equal_window_size():
    validate_training(ModelOptions(bidirectional=True), TrainOptions(window_size=40, step_size=40))
    validate_training(ModelOptions(), TrainOptions(window_size=40, step_size=20))
    with pytest.raises(OptionError, match=r"bidirectional needs step_size = window_size \(got 20 "
                                          r"and 40\).*whole sequences"):
        validate_training(ModelOptions(bidirectional=True), TrainOptions(window_size=40, step_size=20))


@pytest.fixture(scope="module")
def lookahead(tmp_path_factory):
    """The lookahead task with labels 3 frames ahead: sequences of 12 to 18 frames."""
    root = tmp_path_factory.mktemp("bidir") / "lookahead"
    make_dataset("lookahead", root, seed=0, T=12, shift=3, counts={"train": 30, "dev": 10, "test": 5})
    return str(root)


def test_trainer_needs_windows_that_hold_the_longest_sequence(lookahead, tmp_path):
    longest = max(s.length for split in ("train", "dev")
                  for s in Dataset.open(lookahead, split, 4, 4).sequences)
    model = ModelOptions(input_dim=4, target_dim=4, net_width=2, net_depth=1, bidirectional=True)
    short = TrainOptions(loss_type="xent", window_size=longest - 1, step_size=longest - 1)
    with pytest.raises(OptionError, match=rf"window_size >= the longest sequence, but .*lookahead/"
                                          rf"(train|dev)\.list has .* of {longest} frames"):
        Trainer(model, short, lookahead, str(tmp_path / "ws"), out=io.StringIO())
    with pytest.raises(OptionError, match="step_size = window_size"):
        Trainer(model, TrainOptions(window_size=40, step_size=20), lookahead, str(tmp_path / "ws"),
                out=io.StringIO())


def test_a_unidirectional_fingerprint_is_the_one_0_2_computed():
    """The options new since 0.2.0 are left out at their defaults, so snapshots of older
    servers restore."""
    net = Net(ModelOptions(input_dim=2, target_dim=1, net_width=3, net_depth=1))
    options = dataclasses.asdict(net.options)
    for name in ("vocab_size", "token_embedding_dim", "quantiles", "bidirectional", "input_skip"):
        del options[name]
    digest = hashlib.sha256(b"sophia-model-fingerprint-1\0")       # 0.2.0's sophia/serving/model.py
    digest.update(json.dumps(options, sort_keys=True).encode("utf-8"))
    digest.update(json.dumps(["a"]).encode("utf-8"))
    for name, value in sorted(net.get_values().items()):
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        digest.update(f"\0{name}\0{value.dtype.str}\0{value.shape}\0".encode("utf-8"))
        digest.update(value.tobytes())
    assert fingerprint(net, ["a"]) == digest.digest()


# --- offline evaluation and the server ------------------------------------------------

@pytest.fixture(scope="module")
def bidirectional_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidir_ws")
    return write_workspace(root / "bidir", seed=3, unit_type="lstm", bidirectional=True,
                           learn_clock_params=True)


@pytest.mark.parametrize("output_activation", ["identity", "gaussian"])
def test_sophia_eval_runs_whole_sequences(bidirectional_workspace, tmp_path, output_activation):
    """Sequences of unequal lengths, run 3 at a time, give the outputs each gets alone,
    every channel of a probabilistic model's too."""
    if output_activation != "identity":
        bidirectional_workspace = write_workspace(tmp_path / "bidir", seed=3, unit_type="lstm",
                                                  bidirectional=True, learn_clock_params=True,
                                                  output_activation=output_activation)
    width = 2 * (2 if output_activation == "gaussian" else 1)
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "data") as writer:
        for split, lengths in (("train", [9]), ("dev", [9]), ("test", [11, 4, 8, 11, 1])):
            for n, length in enumerate(lengths):
                stamps = 10.0 + np.cumsum(rng.uniform(0.2, 1.5, length))
                writer.add(split, f"{split}/s{n}", rng.normal(size=(length, 3)),
                           rng.normal(size=(length, 2)), stamps)
    report = evaluate(bidirectional_workspace, tmp_path / "data", "test", baselines=("mean",),
                      out=tmp_path / "eval", streams=3)
    test = Dataset.open(str(tmp_path / "data"), "test", 3, 2)
    offline = OfflineModel(bidirectional_workspace)
    for i, seq in enumerate(test.sequences):
        got = np.fromfile(tmp_path / "eval" / (seq.path + ".output"), "<f4").reshape(seq.length, width)
        expected = offline.infer(np.asarray(test.input(i))[:, None], test.time_signal(i)[:, None], [0])
        np.testing.assert_allclose(got, expected[:, 0], atol=1e-5, rtol=0)
    assert report["overall"]["model"]["count"] == 2 * sum(s.length for s in test.sequences)


def test_the_model_loader_refuses_a_bidirectional_model(bidirectional_workspace):
    with pytest.raises(ModelLoadError, match=r"options\.json: the model is bidirectional: .* "
                                             r"cannot be served causally, frame by frame"):
        load_model(bidirectional_workspace)


def test_the_server_refuses_it_with_an_error_and_goes_on_serving(short_dir):
    models_dir = make_models_dir(short_dir)
    write_workspace(os.path.join(models_dir, "bidir"), unit_type="gru", bidirectional=True)
    fakes = FakeLoader()

    def loader(path):            # the real loader for the bidirectional model, fakes for the rest
        return load_model(path) if path.endswith("bidir") else fakes(path)
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, loader=loader) as server:
        for _ in range(2):                            # asked again: the same refusal
            with pytest.raises(ServerError, match=r"bad handshake, no session: cannot load "
                                                  r"workspace 'bidir'.*bidirectional.*frame by frame"):
                SophiaClient(server.endpoint, ["bidir"], 1, [[0]], timeout=3.0)
        with SophiaClient(server.endpoint, ["alpha"], 2, [[0, 1]], timeout=3.0) as client:
            assert client.step(np.zeros((1, 2, 3), np.float32)).shape == (1, 2, 2)
    with pytest.raises(ModelLoadError, match="bidirectional"):
        Server(f"ipc://{short_dir}/p.sock", load_model, models_dir, preload=["bidir"])


# --- what the backward direction buys ----------------------------------------------

_BENCH = Path(__file__).resolve().parents[1] / "bench" / "bidirectional.py"
_spec = importlib.util.spec_from_file_location("bench_bidirectional", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_labels_ahead_need_the_backward_direction(tmp_path):
    """Labels 3 frames ahead: the causal net stays at chance (1/4), the bidirectional one
    labels nearly every test frame (sophia-eval over whole sequences)."""
    result = bench.compare(3, str(tmp_path), epochs=8)
    assert result["bi"]["test_accuracy"] > 0.9
    assert result["uni"]["test_accuracy"] < 0.4
    assert result["bi"]["dev_loss"] < 0.2 * result["uni"]["dev_loss"]


@pytest.mark.slow          # a training measurement (bench/bidirectional.py records it)
def test_labels_behind_are_learned_alike(tmp_path):
    """Labels 3 frames behind need no future: the two nets tie."""
    result = bench.compare(-3, str(tmp_path), epochs=10)
    assert min(result["bi"]["test_accuracy"], result["uni"]["test_accuracy"]) > 0.9
    assert abs(result["bi"]["test_accuracy"] - result["uni"]["test_accuracy"]) < 0.05
