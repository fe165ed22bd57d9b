"""What the graph computes: scan == unrolled, resets, BPTT(h; h'), streaming == offline."""
import numpy as np
import pytest

from sophia.options import TrainOptions
from tests.graph_support import MODE, compile_cost, make_net, make_window


@pytest.mark.parametrize("options", [
    dict(unit_type="lstm", peephole=True, batch_norm=True, learn_clock_params=True),
    dict(unit_type="gru", layer_norm=True, learn_id_embedding=True, residual_gate=True, net_depth=2),
])
def test_unrolled_graph_equals_scan(options):
    net = make_net(**options)
    window = make_window(net, frames=5, batch=3)
    scanned = compile_cost(net, window=5, step=3, batch=3)(*window)
    unrolled = compile_cost(net, window=5, step=3, batch=3, unroll=True)(*window)
    assert len(scanned) == len(unrolled)
    for a, b in zip(scanned, unrolled):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def infer_function(net, frames, batch):
    f, v_states = net.compile_infer(window_size=frames, mode=MODE)
    net.reset_states(v_states, batch_size=batch)
    return f, v_states


def test_time_signal_zero_restarts_the_stream_as_if_alone():
    net = make_net(unit_type="lstm", net_depth=2, learn_clock_params=True, learn_id_embedding=True)
    x, _, ids, _ = make_window(net, frames=7, batch=2)
    time_tb = np.array([[0, 0], [1, 1], [2, 2], [0, 3], [1, 4], [2, 5], [3, 6]], "float64")
    f, _ = infer_function(net, 7, 2)
    together = f(x, time_tb, ids)
    g, v_states = infer_function(net, 4, 1)
    for v in v_states:   # garbage stored state: the reset at time 0 must ignore it
        v.set_value(np.full_like(v.get_value(), 5.0))
    alone = g(x[3:, :1], time_tb[3:, :1], ids[3:, :1])
    np.testing.assert_allclose(together[3:, :1], alone, rtol=1e-12, atol=1e-12)
    assert not np.allclose(together[3:, 1], together[3:, 0])   # the other stream went on


def test_full_bptt_gradient_when_window_covers_the_sequence():
    """h ≥ sequence length: padding frames (time −1) before it change nothing."""
    net = make_net(unit_type="gru", net_depth=2, learn_id_embedding=True)
    x, time_tb, ids, target = make_window(net, frames=6, batch=2, time_tb=np.tile(np.arange(6.0)[:, None], (1, 2)))
    whole = compile_cost(net, window=6, step=6)(x, time_tb, ids, target)
    pad = lambda a, value: np.concatenate([np.full((3,) + a.shape[1:], value, a.dtype), a])
    padded = compile_cost(net, window=9, step=6)(pad(x, 7.0), pad(time_tb, -1.0), pad(ids, 0), pad(target, np.nan))
    padded[3] = padded[3][3:]      # outputs of the sequence's own frames
    for a, b in zip(whole, padded):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_state_carried_across_windows_equals_one_pass():
    """BPTT(6; 3) with lr = 0: after each window the stored state is the state after
    its frame h' − 1, i.e. the one-pass state at the same frame."""
    net = make_net(unit_type="lstm", net_depth=2, learn_id_embedding=True)
    options = TrainOptions(batch_size=2, window_size=6, step_size=3, force_type="adam", compile_mode=MODE)
    f_train, v_states, _ = net.compile_train_step(options)
    length = 12
    x, _, ids, target = make_window(net, frames=length, batch=2, time_tb=np.zeros((length, 2)))
    time_tb = np.tile(np.arange(length, dtype="float64")[:, None], (1, 2))
    before = net.get_values()
    # windows shift by 3: window k covers frames 3k − 3 .. 3k + 2 (the first starts with padding),
    # so after window k the stored state is the one-pass state after frame 3k − 1
    pad = lambda a, value: np.concatenate([np.full((3,) + a.shape[1:], value, a.dtype), a])
    xs, ts, ids_p, tg = pad(x, 0.0), pad(time_tb, -1.0), pad(ids, 0), pad(target, np.nan)
    for k in range(length // 3):
        frames = slice(3 * k, 3 * k + 6)
        f_train(xs[frames], ts[frames], ids_p[frames], tg[frames], 0.0)
        if k == 0:
            continue
        f_head, v_head = infer_function(net, 3 * k, 2)
        f_head(x[:3 * k], time_tb[:3 * k], ids[:3 * k])
        for stored, expected in zip(v_states, v_head):
            np.testing.assert_allclose(stored.get_value(), expected.get_value(), rtol=1e-10, atol=1e-12)
    for name, value in net.get_values().items():   # lr = 0 left the parameters alone
        np.testing.assert_array_equal(value, before[name])


def test_streaming_inference_equals_whole_sequence_float32():
    net = make_net(dtype="float32", unit_type="lstm", net_depth=2, learn_id_embedding=True,
                   learn_clock_params=True, peephole=True)
    length, batch = 9, 3
    rng = np.random.default_rng(3)
    x = rng.standard_normal((length, batch, 3)).astype("float32")
    time_tb = np.cumsum(rng.uniform(0.2, 1.7, (length, batch)), axis=0).astype("float32")
    time_tb[0] = 0
    time_tb[5:, 1] -= time_tb[5, 1]          # stream 1 starts a new sequence at frame 5
    ids = rng.integers(0, 4, (length, batch)).astype("int32")
    f_whole, _ = infer_function(net, length, batch)
    whole = f_whole(x, time_tb, ids)
    f_frame, _ = infer_function(net, 1, batch)
    framewise = np.concatenate([f_frame(x[t:t + 1], time_tb[t:t + 1], ids[t:t + 1]) for t in range(length)])
    np.testing.assert_allclose(framewise, whole, rtol=1e-5, atol=1e-5)


def test_nan_targets_contribute_nothing():
    net = make_net(unit_type="lstm")
    x, time_tb, ids, target = make_window(net, frames=5, batch=3, nan_fraction=0.4)
    f = compile_cost(net, window=5, step=5, batch=3)
    loss, loss_sum, n_frames, output, *grads = f(x, time_tb, ids, target)
    valid = ~np.isnan(target)
    np.testing.assert_allclose(loss_sum, np.sum((output - np.where(valid, target, 0))[valid] ** 2))
    assert n_frames == np.sum(valid.any(axis=-1))
    assert all(np.all(np.isfinite(g)) for g in grads)
    # Filling the NaN targets with the net's own outputs (zero error) gives the same gradient
    # of the summed loss: scale each per-frame gradient back by n_frames.
    filled = np.where(valid, target, output)
    _, loss_sum2, n_frames2, _, *grads2 = f(x, time_tb, ids, filled)
    np.testing.assert_allclose(loss_sum2, loss_sum, rtol=1e-12)
    for g, g2 in zip(grads, grads2):
        np.testing.assert_allclose(g * n_frames, g2 * n_frames2, rtol=1e-9, atol=1e-12)


def test_fwd_propagate_reports_the_largest_error_of_a_target_element():
    """f_fwd_propagate's max error (the 1997 paper's "wrong" measure) skips NaN targets."""
    net = make_net(unit_type="lstm")
    x, time_tb, ids, target = make_window(net, frames=5, batch=3, nan_fraction=0.4)
    f_fwd, v_eval = net.compile_fwd_propagate(TrainOptions(batch_size=3, window_size=5, step_size=5,
                                                           compile_mode=MODE))
    f_infer, v_infer = infer_function(net, frames=5, batch=3)
    output = f_infer(x, time_tb, ids)
    valid = ~np.isnan(target)
    loss_sum, _, max_error = f_fwd(x, time_tb, ids, target)
    np.testing.assert_allclose(max_error, np.max(np.abs(output - target)[valid]), rtol=1e-10)
    np.testing.assert_allclose(loss_sum, np.sum((output - target)[valid] ** 2), rtol=1e-10)
    net.reset_states(v_eval)
    assert f_fwd(x, time_tb, ids, np.full_like(target, np.nan))[2] == 0.0
    # f_train_step: over the loss frames (the last step_size), before the update
    f_train, _, _ = net.compile_train_step(TrainOptions(batch_size=3, window_size=5, step_size=2,
                                                        compile_mode=MODE))
    assert f_train(x, time_tb, ids, target, 0.5)[3] == pytest.approx(
        np.max(np.where(valid, np.abs(output - target), 0.0)[-2:]), rel=1e-10)


def test_batch_norm_keeps_population_statistics_for_inference():
    net = make_net(unit_type="gru", batch_norm=True, batch_norm_momentum=0.5)
    options = TrainOptions(batch_size=4, window_size=4, step_size=4, compile_mode=MODE)
    f_train, _, _ = net.compile_train_step(options)
    x, _, ids, target = make_window(net, frames=4, batch=4)
    x = x * 3.0 + 2.0
    time_tb = np.tile(np.arange(4.0)[:, None], (1, 4))
    pop_mean = net.v_buffers["layer0.norm_x.pop_mean"]
    for _ in range(30):
        f_train(x, time_tb, ids, target, 0.0)
    # with lr = 0 the population mean of the x path converges to the batch mean per time step
    a = (x.reshape(16, 3) @ net.v_params["layer0.W_x"].get_value()).reshape(4, 4, -1)
    np.testing.assert_allclose(pop_mean.get_value()[:4], a.mean(axis=1), rtol=1e-6, atol=1e-8)
    assert np.all(pop_mean.get_value()[4:] == 0)   # steps never seen keep their initial value


def test_parameters_round_trip_and_mismatch_is_named():
    net, other = make_net(unit_type="lstm", seed=1), make_net(unit_type="lstm", seed=2)
    other.set_values(net.get_values())
    for name, value in other.get_values().items():
        np.testing.assert_array_equal(value, net.get_values()[name])
    with pytest.raises(ValueError, match="layer0.W_h"):
        make_net(unit_type="gru").set_values(net.get_values())


def test_gate_biases_initialise_their_own_gate():
    """input_bias and forget_bias land in the LSTM's input and forget gates: with the
    input gate shut (bias -30) no input reaches the cells, so every frame's output is
    the same; the bias vector holds each in its own block (gate order i, f, o, g)."""
    from sophia.graph.net import Net
    from sophia.options import ModelOptions

    def outputs(**biases):
        options = ModelOptions(input_dim=3, target_dim=2, net_width=4, net_depth=1,
                               learn_init_states=False, init_scale=0.5, **biases)
        net = Net(options, seed=0, dtype="float64")
        x, time_tb, ids, _ = make_window(net, frames=6, batch=2, time_tb=np.arange(1.0, 7.0)[:, None] * [1, 1])
        f, _ = infer_function(net, 6, 2)
        return f(x, time_tb, ids)

    shut = outputs(input_bias=-30.0)
    np.testing.assert_allclose(shut, np.broadcast_to(shut[:1, :1], shut.shape), atol=1e-12)
    assert np.ptp(outputs(input_bias=0.0)) > 1e-3
    b = Net(ModelOptions(input_dim=3, target_dim=2, net_width=4, net_depth=1, input_bias=-2.0,
                         forget_bias=3.0), seed=0).layers[0].v_b_g.get_value()
    np.testing.assert_array_equal(b, np.repeat([-2.0, 3.0, 0.0, 0.0], 4))


@pytest.mark.parametrize("options", [
    dict(unit_type="lstm", weight_norm=True), dict(unit_type="gru", weight_norm=True),
    dict(unit_type="lstm", layer_norm=True, peephole=True), dict(unit_type="gru", batch_norm=True),
    dict(unit_type="lstm", learn_clock_params=True, learn_id_embedding=True, id_embedding_dim=2),
])
def test_float32_nets_train_in_float32(options):
    """Every option compiles a float32 train step whose updates stay float32 (a Python
    float constant once made weight norm's graph float64, and the step failed to build)."""
    net = make_net(dtype="float32", **options)
    f_train, _, _ = net.compile_train_step(TrainOptions(batch_size=2, window_size=5, step_size=3,
                                                        compile_mode=MODE))
    before = {k: v.copy() for k, v in net.get_values().items()}
    f_train(*make_window(net, frames=5, batch=2), np.float32(0.01))
    after = net.get_values()
    assert all(v.dtype == np.float32 for v in after.values())
    assert any(not np.array_equal(before[k], after[k]) for k in after)
