"""Token inputs end to end: the embedding's gradient and engines, bad indices in a
dataset check, a trainer and a server frame, vocab.json, a tiny next-token run that
learns, served against offline probabilities."""
import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from fake_models import running_server
from model_workspaces import write_workspace
from sophia.data import cli as data_cli
from sophia.data.dataset import DatasetError, check_dataset
from sophia.data.vocab import parse_vocab, read_vocab, symbols_by_index, write_vocab
from sophia.data.writer import DatasetWriter
from sophia.evaluation.evaluate import EvalError, evaluate
from sophia.graph import engines
from sophia.graph.engines import onednn
from sophia.options import ModelOptions, OptionError, TrainOptions
from sophia.serving import protocol as proto
from sophia.serving.client import SophiaClient
from sophia.graph.net import Net
from sophia.serving.model import fingerprint, load_model
from sophia.training.trainer import Trainer, open_data
from sophia.workspace import Workspace, WorkspaceError, load_net, load_vocab
from tests.graph_support import compile_cost, make_net, make_window
from tests.test_graph_gradients import directional_check

VOCAB = {"a": 0, "b": 1, "c": 2, "d": 3}
TINY = dict(batch_size=4, window_size=8, step_size=4, compile_mode="FAST_COMPILE", lr_init_val=0.05)


def token_net(dtype="float64", **overrides):
    """A tiny net on token inputs (vocabulary 5, embedding width 3)."""
    return make_net(dtype=dtype, input_dim=1, vocab_size=5, token_embedding_dim=3, **overrides)


def token_window(net, frames, batch, seed=2):
    """:func:`make_window` with token indices as inputs."""
    _, time_tb, ids, target = make_window(net, frames=frames, batch=batch)
    tokens = np.random.default_rng(seed).integers(0, net.options.vocab_size, (frames, batch, 1))
    return tokens.astype(net.dtype), time_tb, ids, target


# --- the graph -----------------------------------------------------------------

@pytest.mark.parametrize("overrides", [dict(unit_type="lstm"),
                                       dict(unit_type="gru", learn_id_embedding=True, id_embedding_dim=2),
                                       dict(unit_type="fc", residual_gate=True, net_width=3)])
def test_token_embedding_gradient_matches_finite_differences(overrides):
    net = token_net(**overrides)
    window = token_window(net, frames=5, batch=3)
    directional_check(net, compile_cost(net, window=5, step=4, batch=3), window)
    assert "token_embedding" in net.v_params
    assert net.v_params["token_embedding"].get_value().shape == (5, 3)


def test_a_token_is_the_row_of_its_embedding():
    """A token net equals a real-input net whose first layer reads the embedding's rows."""
    net = token_net(unit_type="lstm")
    x_tb1, time_tb, ids, target = token_window(net, frames=6, batch=2)
    real = make_net(unit_type="lstm", input_dim=3)
    values = {k: v for k, v in net.get_values().items() if k != "token_embedding"}
    real.set_values(values)
    table = net.get_values()["token_embedding"]
    got = compile_cost(net, 6, 6, batch=2, with_grads=False)(x_tb1, time_tb, ids, target)
    want = compile_cost(real, 6, 6, batch=2, with_grads=False)(
        table[x_tb1[:, :, 0].astype(int)], time_tb, ids, target)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unit", ["lstm", "gru"])
@pytest.mark.parametrize("engine", [name for name in engines.ENGINES if name != "scan"])
def test_every_engine_runs_token_inputs_as_scan_does(engine, unit):
    if engine == "onednn" and not onednn.available():
        pytest.skip(f"oneDNN unavailable: {onednn.UNAVAILABLE_REASON}")
    dtype = "float32" if engine == "onednn" else "float64"
    net = token_net(dtype=dtype, unit_type=unit, net_depth=2)
    window = token_window(net, frames=6, batch=3)
    if any(c.engine != engine for c in net.choose_engines("auto", training=True, prefer=engine)):
        pytest.skip(f"{engine} does not run {unit} (tests/test_engines.py checks why)")
    got = compile_cost(net, 6, 4, batch=3, engine=engine)(*window)
    want = compile_cost(net, 6, 4, batch=3, engine="scan")(*window)
    tol = 1e-5 if dtype == "float32" else 1e-10
    names = list(net.v_params)
    for n, (g, w) in enumerate(zip(got, want)):
        label = "loss" if n < 3 else ("outputs" if n == 3 else names[n - 4])
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * 10, err_msg=label)


def test_token_options_are_checked():
    with pytest.raises(OptionError, match="input_dim must be 1"):
        ModelOptions(input_dim=3, vocab_size=5).validate()
    with pytest.raises(OptionError, match="token_embedding_dim"):
        ModelOptions(vocab_size=5, token_embedding_dim=0).validate()
    with pytest.raises(OptionError, match="vocab_size"):
        ModelOptions(vocab_size=-1).validate()


# --- data: vocab.json and bad indices ---------------------------------------------

def next_token_data(root, seed=0, counts=(("train", 24), ("dev", 8), ("test", 1)), vocab=True):
    """Token sequences of 'a'-'d' where each token is (previous + one before) mod 4 after
    two random ones; the target of frame t is the token of frame t + 1 (the last frame
    has none). The next token follows from the last two: a net with memory gets ~1,
    the majority class far less."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for split, n in counts:
            for i in range(n):
                length = int(rng.integers(20, 29))
                x = list(rng.integers(0, 4, 2))
                while len(x) < length + 1:
                    x.append((x[-1] + x[-2]) % 4)
                target_tk = np.full((length, 4), np.nan)
                target_tk[:] = np.eye(4)[x[1:length + 1]]
                target_tk[-1] = np.nan
                writer.add(split, f"{split}{i}", np.asarray(x[:length], float)[:, None], target_tk)
    if vocab:
        write_vocab(os.path.join(root, "vocab.json"), VOCAB)
    return str(root)


def write_tokens(root, frame, value):
    """A valid token dataset whose dev0 input at ``frame`` is then set to ``value``."""
    next_token_data(root, counts=(("train", 2), ("dev", 1), ("test", 1)))
    file = os.path.join(root, "dev0.input")
    input_t = np.fromfile(file, "<f4")
    input_t[frame] = value
    input_t.tofile(file)
    return str(root)


@pytest.mark.parametrize("frame, value", [(2, 4.0), (1, 2.5), (0, -1.0), (3, np.nan)])
def test_bad_token_indices_name_the_file_and_frame(tmp_path, capsys, frame, value):
    root = write_tokens(tmp_path / "d", frame, value)
    if np.isnan(value):
        message = f"dev0.input: input value nan at frame {frame}, dimension 0 is not finite"
    else:
        message = (f"dev0.input: input frame {frame} is {value}, but token inputs need an "
                   "integer index in [0, 4)")
    with pytest.raises(DatasetError, match=re.escape(message)):
        check_dataset(root, target_dim=4, vocab_size=4)
    assert data_cli.main(["check", root, "--target_dim", "4", "--vocab_size", "4"]) == 1
    assert message in capsys.readouterr().err
    with pytest.raises(DatasetError, match=f"input frame {frame}"):
        open_data(root, ModelOptions(vocab_size=4, target_dim=4), loss_type="xent")
    if not np.isnan(value):
        assert data_cli.main(["check", root, "--target_dim", "4"]) == 0      # real inputs: fine


def test_a_dataset_check_infers_input_dim_1_for_tokens(tmp_path):
    root = next_token_data(tmp_path / "d", counts=(("train", 3), ("dev", 1), ("test", 1)))
    summary = check_dataset(root, vocab_size=4)
    assert (summary.input_dim, summary.target_dim) == (1, 4)


@pytest.mark.parametrize("content, reason", [
    ({"a": 0, "b": 0}, "symbols 'a' and 'b' share index 0"),
    ({"a": 0, "b": 4}, "symbol 'b' has index 4, outside [0, 4)"),
    ({"a": 0, "b": -1}, "symbol 'b' has index -1, expected an integer >= 0"),
    ({"a": 0, "b": 1.5}, "symbol 'b' has index 1.5"),
    ({"a": 0, "b": True}, "symbol 'b' has index True"),
    ({"": 0}, "an empty symbol"),
    (["a", "b"], "expected a non-empty JSON object"),
    ({}, "expected a non-empty JSON object"),
])
def test_vocab_json_is_validated(tmp_path, capsys, content, reason):
    with pytest.raises(DatasetError, match=re.escape(reason)):
        parse_vocab(content, "vocab.json", vocab_size=4)
    root = next_token_data(tmp_path / "d", counts=(("train", 2), ("dev", 1), ("test", 1)))
    with open(os.path.join(root, "vocab.json"), "w") as f:
        json.dump(content, f)
    assert data_cli.main(["check", root, "--vocab_size", "4"]) == 1
    assert "vocab.json: " in capsys.readouterr().err
    with pytest.raises(DatasetError, match="vocab.json"):
        open_data(root, ModelOptions(vocab_size=4), loss_type="xent")


def test_vocab_json_round_trips_and_needs_every_symbol_to_generate(tmp_path):
    write_vocab(tmp_path / "vocab.json", {"é": 1, "a": 0})
    assert read_vocab(tmp_path / "vocab.json", 2) == {"a": 0, "é": 1}
    assert symbols_by_index({"é": 1, "a": 0}, 2) == ["a", "é"]
    with pytest.raises(DatasetError, match=r"no symbol for token indices \[1, 3\]"):
        symbols_by_index({"a": 0, "c": 2}, 4)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json: cannot read a vocabulary"):
        read_vocab(tmp_path / "bad.json")


# --- a tiny run that learns, served as offline ---------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LSTM on token inputs trained with xent; returns (data, workspace, result)."""
    data = next_token_data(tmp_path_factory.mktemp("data") / "fib")
    ws = str(tmp_path_factory.mktemp("ws") / "tokens")
    trainer = Trainer(ModelOptions(net_width=16, net_depth=1, vocab_size=4, token_embedding_dim=4),
                      TrainOptions(loss_type="xent", frames_per_epoch=1500, max_epochs=5, **TINY),
                      data, ws, out=io.StringIO())
    return data, ws, trainer.run()


def test_a_tiny_token_run_learns_the_next_token_far_above_the_majority_class(trained):
    data, ws, result = trained
    records = Workspace(ws, create=False).read_metrics()
    best = max(r["dev_accuracy"] for r in records)
    assert records[-1]["baseline_accuracy"] < 0.5
    assert best > records[-1]["baseline_accuracy"] + 0.4
    assert result.best_dev_loss < 0.5 * result.baseline
    saved = Workspace(ws, create=False)
    assert load_vocab(saved, load_net(ws)[1].model) == VOCAB      # copied with the data
    assert load_net(ws)[1].model.input_dim == 1


def test_served_token_probabilities_equal_offline_inference_and_sum_to_one(trained):
    data, ws, _ = trained
    net, _ = load_net(ws)
    tokens_tb = np.random.default_rng(5).integers(0, 4, (12, 3)).astype(np.float32)
    time_tb = np.tile(np.arange(12, dtype=np.float32)[:, None], (1, 3))
    f_infer, v_states = net.compile_infer(window_size=12, mode="FAST_COMPILE")
    net.reset_states(v_states, batch_size=3)
    offline_tbk = f_infer(tokens_tb[:, :, None], time_tb, np.zeros((12, 3), np.int32))
    session = load_model(ws, mode="FAST_COMPILE").new_session([0, 0, 0])
    served_tbk = np.stack([session.step(tokens_tb[t][:, None]) for t in range(12)])
    np.testing.assert_allclose(served_tbk, offline_tbk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served_tbk.sum(axis=2), 1.0, rtol=1e-5)
    assert np.all(served_tbk >= 0)


# --- the server: a bad token is an error reply, the session goes on -------------------

@pytest.fixture(scope="module")
def token_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    path = write_workspace(root / "tok", input_dim=1, target_dim=4, vocab_size=4,
                           token_embedding_dim=3, output_activation="softmax")
    write_vocab(os.path.join(path, "vocab.json"), VOCAB)
    return str(root), "tok"


@pytest.mark.parametrize("value, where", [(4.0, "[0][1][0]"), (1.5, "[0][1][0]"), (-1.0, "[0][1][0]")])
def test_a_bad_token_in_a_server_frame_gets_an_error_and_advances_nothing(
        token_workspace, short_dir, value, where):
    models_dir, name = token_workspace
    tokens = np.array([[[1.0], [2.0]], [[3.0], [0.0]], [[2.0], [2.0]]], np.float32)
    with running_server(f"ipc://{short_dir}/t.sock", models_dir, loader=load_model) as server:
        with SophiaClient(server.endpoint, [name], 2, [[0, 0]], timeout=30.0) as c:
            got = [c.step(tokens[0][None])[0]]
            bad = tokens[1][None].copy()
            bad[0, 1, 0] = value
            c._socket.send(proto.format_frames(bad))
            assert c._socket.poll(30_000)
            reply = c._socket.recv()
            assert reply.startswith(b"error: ") and f"frame value {value} at {where}".encode() in reply
            assert b"[0, 4)" in reply
            got += [c.step(f[None])[0] for f in tokens[1:]]
    session = load_model(os.path.join(models_dir, name), mode="FAST_COMPILE").new_session([0, 0])
    want = [session.step(f) for f in tokens]
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-6)


def test_a_session_refuses_a_bad_token(token_workspace):
    models_dir, name = token_workspace
    session = load_model(os.path.join(models_dir, name), mode="FAST_COMPILE").new_session([0])
    with pytest.raises(ValueError, match=r"frame value 7.0 at \[0\]\[0\]\[0\] is not a token index"):
        session.step(np.array([[7.0]], np.float32))


def test_load_vocab_names_a_missing_file(tmp_path):
    path = write_workspace(tmp_path / "w", input_dim=1, target_dim=4, vocab_size=4,
                           output_activation="softmax")
    with pytest.raises(WorkspaceError, match="vocab.json: missing"):
        load_vocab(Workspace(path, create=False), ModelOptions(vocab_size=4))


def test_sophia_eval_runs_a_token_model_and_names_a_bad_token(trained, tmp_path):
    data, ws, _ = trained
    report = evaluate(ws, data, split="test", baselines=("mean",), mode="FAST_COMPILE")
    assert report["split"] == "test" and report["input_dim"] == 1
    bad = shutil.copytree(data, tmp_path / "bad")
    input_t = np.fromfile(bad / "test0.input", "<f4")
    input_t[5] = 9.0
    input_t.tofile(bad / "test0.input")
    with pytest.raises(EvalError, match=re.escape("test0.input: input frame 5 is 9.0, but token "
                                                  "inputs need an integer index in [0, 4)")):
        evaluate(ws, str(bad), split="test", baselines=("mean",), mode="FAST_COMPILE")


# The fingerprint the 0.2.0 server (commit 0f49e7b) gives FINGERPRINT_NET with
# arange(size) / 7 in every parameter and ids ["a", "b"]: states it saved must resume.
FINGERPRINT_0_2_0 = "23209ccfcfa62614bd324d93a56abd7e647b0335f383d783f1993ee5a201b1e8"
FINGERPRINT_NET = dict(input_dim=2, target_dim=1, net_width=3, net_depth=1, unit_type="gru")


def arange_fingerprint(**overrides):
    net = Net(ModelOptions(**{**FINGERPRINT_NET, **overrides}), seed=0)
    net.set_values({k: np.arange(v.size, dtype=np.float32).reshape(v.shape) / 7
                    for k, v in net.get_values().items()})
    return fingerprint(net, ["a", "b"]).hex()


def test_a_model_without_tokens_keeps_its_0_2_0_fingerprint():
    assert arange_fingerprint() == FINGERPRINT_0_2_0
    assert arange_fingerprint(input_dim=1, vocab_size=4) != arange_fingerprint(input_dim=1)


def test_sophia_data_check_reports_a_bad_vocab_and_bad_tokens_together(tmp_path, capsys):
    root = write_tokens(tmp_path / "d", 4, 7.0)
    with open(os.path.join(root, "vocab.json"), "w") as f:
        json.dump({"a": 0, "b": 0}, f)
    assert data_cli.main(["check", root, "--vocab_size", "4"]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "share index 0" in err and "input frame 4 is 7.0" in err
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["check", root, "--vocab_size", "4", "--input_dim", "3"])
    assert exit_info.value.code == 2 and "have input_dim 1, got 3" in capsys.readouterr().err
