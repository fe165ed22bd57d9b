"""The losses against numpy, with masking; stable forms; float32 graphs stay float32."""
import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from sophia.optim.losses import masked_hits, masked_loss

MODE = "FAST_COMPILE"


def compiled(loss_type, dtype="float64"):
    s_z, s_t = tt.tensor3(dtype=dtype), tt.tensor3(dtype=dtype)
    outputs = list(masked_loss(s_z, s_t, loss_type)) + list(masked_hits(s_z, s_t, loss_type))
    return th.function([s_z, s_t], outputs, mode=MODE), outputs


def one_hot_targets(rng, shape, k):
    target = np.eye(k)[rng.integers(0, k, shape)]
    target[rng.random(shape) < 0.3] = np.nan
    return target


def test_xent_matches_numpy_with_masked_frames():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 3, 4)) * 3
    t = one_hot_targets(rng, (5, 3), 4)
    f, _ = compiled("xent")
    loss_sum, n_frames, n_correct, n_judged = f(z, t)
    valid = ~np.isnan(t).all(-1)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = -(np.nan_to_num(t) * logp).sum(-1)[valid].sum()
    assert loss_sum == pytest.approx(expected, rel=1e-12)
    assert n_frames == n_judged == valid.sum()
    assert n_correct == (z.argmax(-1) == np.nan_to_num(t).argmax(-1))[valid].sum()


@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_smoothed_xent_matches_numpy_with_masked_frames(epsilon):
    """Label smoothing ε trains against (1 − ε)·one-hot + ε/k; frames without a target stay out."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal((5, 3, 4)) * 3
    t = one_hot_targets(rng, (5, 3), 4)
    s_z, s_t = tt.tensor3(), tt.tensor3()
    f = th.function([s_z, s_t], list(masked_loss(s_z, s_t, "xent", label_smoothing=epsilon)), mode=MODE)
    loss_sum, n_frames = f(z, t)
    valid = ~np.isnan(t).all(-1)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    smoothed = (1 - epsilon) * np.nan_to_num(t) + epsilon / 4
    assert loss_sum == pytest.approx(-(smoothed * logp).sum(-1)[valid].sum(), rel=1e-12)
    assert n_frames == valid.sum()


def test_bce_matches_numpy_with_masked_elements():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 3, 4)) * 3
    t = (rng.random(z.shape) < 0.5).astype(float)
    t[rng.random(z.shape) < 0.3] = np.nan
    t[0, 0] = np.nan                                              # one frame without any target
    f, _ = compiled("bce")
    loss_sum, n_frames, n_correct, n_judged = f(z, t)
    valid = ~np.isnan(t)
    p = 1 / (1 + np.exp(-z))
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p))[valid].sum()
    assert loss_sum == pytest.approx(expected, rel=1e-10)
    assert n_frames == valid.any(-1).sum()
    assert n_judged == valid.sum()
    assert n_correct == ((p > 0.5) == (t == 1))[valid].sum()


@pytest.mark.parametrize("loss_type", ["xent", "bce"])
def test_categorical_losses_are_stable_for_large_logits(loss_type):
    z = np.array([[[1000.0, -1000.0]]], "float32")
    t = np.array([[[0.0, 1.0]]], "float32")
    loss_sum, n_frames, *_ = compiled(loss_type, "float32")[0](z, t)
    assert np.isfinite(loss_sum) and loss_sum == pytest.approx(2000.0, rel=1e-6)


@pytest.mark.parametrize("loss_type", ["xent", "bce"])
def test_float32_loss_graph_stays_float32(loss_type):
    f, outputs = compiled(loss_type, "float32")
    assert all(o.dtype == "float32" for o in outputs)
    assert not any(v.type.dtype == "float64" for v in f.maker.fgraph.variables
                   if hasattr(v.type, "dtype")), "a float64 node in a float32 loss graph"


@pytest.mark.parametrize("loss_type,activation", [("xent", "softmax"), ("bce", "sigmoid")])
def test_float32_net_training_graph_stays_float32(loss_type, activation):
    from sophia.options import TrainOptions
    from tests.graph_support import make_net
    net = make_net(dtype="float32", unit_type="fc", output_activation=activation)
    f, _, _ = net.compile_train_step(TrainOptions(loss_type=loss_type, batch_size=2, window_size=3,
                                                  step_size=2), mode=MODE)
    assert [o.type.dtype for o in f.maker.fgraph.outputs[:6]] == ["float32"] * 6
    assert not any(getattr(v.type, "dtype", "") == "float64" for v in f.maker.fgraph.variables)


def test_a_loss_that_does_not_fit_the_output_activation_is_an_error():
    from sophia.options import OptionError, TrainOptions
    from tests.graph_support import make_net
    net = make_net(unit_type="fc")                                 # identity outputs
    with pytest.raises(OptionError, match="softmax"):
        net.compile_fwd_propagate(TrainOptions(loss_type="xent", batch_size=2, window_size=3,
                                               step_size=3), mode=MODE)
