"""sophia.serving.ensemble: the composition of N models for one client (fake models)."""
import numpy as np
import pytest

from fake_models import FAKES, FakeModel, reference_outputs
from sophia.serving.ensemble import Ensemble, EnsembleError


def test_outputs_stack_each_models_stream_on_its_own_frames():
    names, rows = ["beta", "alpha"], [[0, 0], [3, 4]]
    ensemble = Ensemble(names, [FakeModel(**FAKES[name]) for name in names], rows)
    rng = np.random.default_rng(0)
    frames_tnbj = rng.standard_normal((4, 2, 2, 3)).astype(np.float32)
    got_tnbk = np.stack([ensemble.step(frames_nbj) for frames_nbj in frames_tnbj])
    assert got_tnbk.shape == (4, 2, 2, 2) and got_tnbk.dtype == np.float32
    for n, (name, ids) in enumerate(zip(names, rows)):
        np.testing.assert_array_equal(got_tnbk[:, n], reference_outputs(name, frames_tnbj[:, n], ids))


def test_reset_restarts_those_streams_of_every_model():
    ensemble = Ensemble(["a", "b"], [FakeModel(1.0), FakeModel(3.0)], [[0, 0], [0, 0]])
    ones_nbj = np.ones((2, 2, 3), np.float32)
    ensemble.step(ones_nbj)
    ensemble.reset([1])
    out_nbk = ensemble.step(ones_nbj)
    assert np.all(out_nbk[:, 1] * 2 == out_nbk[:, 0])        # stream 1 has one frame, stream 0 two


def test_models_that_differ_in_width_or_ids_cannot_serve_together():
    with pytest.raises(EnsembleError, match=r"differ in \(input_dim, target_dim\): 'a': \(3, 2\), 'b': \(4, 2\)"):
        Ensemble(["a", "b"], [FakeModel(1.0), FakeModel(1.0, input_dim=4)], [[0], [0]])
    with pytest.raises(EnsembleError, match=r"ID index 5 is outside \[0, 5\) for 'b'"):
        Ensemble(["a", "b"], [FakeModel(1.0), FakeModel(1.0, num_ids=5)], [[9], [5]])


def test_a_model_with_a_wrong_output_shape_is_a_runtime_error():
    class Broken(FakeModel):
        def new_session(self, id_indices):
            session = super().new_session(id_indices)
            step = session.step
            session.step = lambda input_bj, t=None: step(input_bj, t)[:, :1]
            return session
    ensemble = Ensemble(["a"], [Broken(1.0)], [[0, 0]])
    with pytest.raises(RuntimeError, match=r"model output shape \(1, 2, 1\) != \(1, 2, 2\)"):
        ensemble.step(np.zeros((1, 2, 3), np.float32))
