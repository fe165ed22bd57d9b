"""Initialisers: sparse initialisation and spectral-radius scaling, in the nets they build."""
import numpy as np
import pytest

from sophia.graph.init import Sparse, SpectralRadius, Uniform
from sophia.graph.net import Net
from sophia.options import ModelOptions, OptionError


def test_sparse_gives_each_unit_exactly_its_connections_from_a_gaussian():
    w = Sparse(15, 0.5)((40, 30), np.random.default_rng(0))
    assert (np.count_nonzero(w, axis=0) == 15).all()
    assert abs(w[w != 0].std() - 0.5) < 0.05
    assert (np.count_nonzero(Sparse(15, 1.0)((4, 6), np.random.default_rng(0)), axis=0) == 4).all()


def test_spectral_radius_rescales_a_square_matrix():
    w = SpectralRadius(Uniform(1.0), 1.1)((20, 20), np.random.default_rng(1))
    assert np.max(np.abs(np.linalg.eigvals(w))) == pytest.approx(1.1)


def test_a_sparse_tanh_rnn_net_has_sparse_inputs_and_recurrences_scaled():
    options = ModelOptions(input_dim=30, target_dim=1, unit_type="rnn", net_width=50, net_depth=1,
                           init_type="sparse", sparse_connections=15, orthogonal_recurrent=False,
                           recurrent_spectral_radius=1.2, init_scale=1.0)
    values = Net(options, seed=0, dtype="float64").get_values()
    W_x, W_h = values["layer0.W_x"], values["layer0.W_h"]
    assert W_x.shape == (30, 50) and (np.count_nonzero(W_x, axis=0) == 15).all()
    assert (np.count_nonzero(W_h, axis=0) == 15).all()
    assert np.max(np.abs(np.linalg.eigvals(W_h))) == pytest.approx(1.2)


@pytest.mark.parametrize("bad, message", [(dict(sparse_connections=0), "sparse_connections"),
                                          (dict(recurrent_spectral_radius=-1.0), "recurrent_spectral_radius"),
                                          (dict(unit_type="rnn", peephole=True), "peephole needs unit_type lstm")])
def test_bad_init_options_name_the_option(bad, message):
    with pytest.raises(OptionError, match=message):
        ModelOptions(**bad).validate()
