"""``sophia-generate``: sampling through the serving step, the temperature, the seed, and
the prime and settings it refuses."""
import os

import numpy as np
import pytest

from model_workspaces import write_workspace
from sophia.data.vocab import write_vocab
from sophia.serving import generate as gen
from sophia.serving.generate import GenerationError, Generator, sample, tokenize
from sophia.serving.model import Model, load_model
from sophia.workspace import Workspace, load_net

VOCAB = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "th": 5}
MODE = "FAST_COMPILE"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A GRU on tokens with random weights; its output layer scaled up so that the
    next-token distributions are far from uniform."""
    path = write_workspace(tmp_path_factory.mktemp("models") / "text", input_dim=1, target_dim=6,
                           vocab_size=6, token_embedding_dim=4, unit_type="gru",
                           output_activation="softmax")
    net, _ = load_net(path)
    values = net.get_values()
    values = {k: v * 4 if k.startswith("output") else v for k, v in values.items()}
    Workspace(path, create=False).save_arrays("params", values)
    write_vocab(os.path.join(path, "vocab.json"), VOCAB)
    return path


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    """Another GRU on the same tokens, with other weights: a second ensemble member."""
    path = write_workspace(tmp_path_factory.mktemp("models") / "text2", seed=7, input_dim=1,
                           target_dim=6, vocab_size=6, token_embedding_dim=4, unit_type="gru",
                           output_activation="softmax")
    net, _ = load_net(path)
    Workspace(path, create=False).save_arrays("params", {
        k: v * 4 if k.startswith("output") else v for k, v in net.get_values().items()})
    write_vocab(os.path.join(path, "vocab.json"), VOCAB)
    return path


def offline_probabilities(workspace, tokens):
    """``f_infer``'s softmax outputs [T][K] over the whole token sequence at once."""
    net, _ = load_net(workspace)
    f_infer, v_states = net.compile_infer(window_size=len(tokens), mode=MODE)
    net.reset_states(v_states, batch_size=1)
    return f_infer(tokens[:, None, None], np.arange(len(tokens), dtype=np.float32)[:, None],
                   np.zeros((len(tokens), 1), np.int32))[:, 0]


@pytest.fixture(scope="module")
def generator(workspace):
    return Generator.load(workspace, mode=MODE)


def entropy(tokens):
    counts = np.bincount(tokens, minlength=len(VOCAB)) / len(tokens)
    counts = counts[counts > 0]
    return float(-(counts * np.log(counts)).sum())


def test_the_same_seed_gives_the_same_text(generator):
    one = generator.generate("abth", 40, 1.0, seed=11)
    assert one == generator.generate("abth", 40, 1.0, seed=11)
    assert one.startswith("abth") and len(tokenize(one, VOCAB)) == 3 + 40
    others = {generator.generate("abth", 40, 1.0, seed=s) for s in range(12, 16)}
    assert len(others | {one}) > 1


def test_a_low_temperature_follows_the_likeliest_token_of_offline_inference(workspace, generator):
    """T → 0 samples the argmax; feeding the text back through f_infer over the whole
    sequence gives the same argmax at every frame: the step is the model's."""
    text = generator.generate("ca", 25, 1e-4, seed=0)
    tokens = np.array(tokenize(text, VOCAB), np.float32)
    net, _ = load_net(workspace)
    f_infer, v_states = net.compile_infer(window_size=len(tokens), mode=MODE)
    net.reset_states(v_states, batch_size=1)
    p_tk = f_infer(tokens[:, None, None], np.arange(len(tokens), dtype=np.float32)[:, None],
                   np.zeros((len(tokens), 1), np.int32))[:, 0]
    np.testing.assert_array_equal(tokens[2:], p_tk[1:-1].argmax(axis=1))


def test_an_ensemble_follows_the_argmax_of_its_members_mean_probability(workspace, second):
    """Two members at T → 0: every sampled token is the argmax of the mean of the two
    nets' offline probabilities, and the text differs from either member's alone."""
    both = Generator.load([workspace, second], mode=MODE)
    text = both.generate("ca", 25, 1e-4, seed=0)
    tokens = np.array(tokenize(text, VOCAB), np.float32)
    mean_tk = (offline_probabilities(workspace, tokens) + offline_probabilities(second, tokens)) / 2
    np.testing.assert_array_equal(tokens[2:], mean_tk[1:-1].argmax(axis=1))
    alone = {Generator.load(w, mode=MODE).generate("ca", 25, 1e-4, seed=0) for w in (workspace, second)}
    assert text not in alone


def test_the_command_takes_several_workspaces_as_one_ensemble(workspace, second, capsys):
    assert gen.main([workspace, second, "--prime", "ab", "--length", "9", "--seed", "2"]) == 0
    expected = Generator.load([workspace, second], mode=MODE).generate("ab", 9, 1.0, seed=2)
    assert capsys.readouterr().out == expected + "\n"


def test_an_ensemble_needs_one_vocabulary(workspace, second, tmp_path):
    other = write_workspace(tmp_path / "other", input_dim=1, target_dim=6, vocab_size=6,
                            token_embedding_dim=4, output_activation="softmax")
    write_vocab(os.path.join(other, "vocab.json"), {**VOCAB, "a": 5, "th": 0})
    with pytest.raises(GenerationError, match="vocab.json differs from .*text"):
        Generator.load([workspace, other], mode=MODE)
    small = write_workspace(tmp_path / "small", input_dim=1, target_dim=5, vocab_size=5,
                            token_embedding_dim=4, output_activation="softmax")
    models = [load_model(w, mode=MODE) for w in (workspace, small)]
    with pytest.raises(GenerationError, match=r"differ in vocab_size: '.*text': 6, '.*small': 5"):
        Generator(models, VOCAB, [workspace, small])


def test_every_frame_goes_through_the_serving_models_step(generator, monkeypatch):
    calls, run = [], Model.run
    monkeypatch.setattr(Model, "run", lambda self, *a: calls.append(1) or run(self, *a))
    generator.generate("abc", 7, 0.8, seed=1)
    assert len(calls) == 3 + 7 - 1        # each prime token, then each sampled one but the last


def test_a_lower_temperature_gives_lower_entropy(generator):
    low = [entropy(tokenize(generator.generate("a", 150, 0.3, seed=s), VOCAB)[1:]) for s in range(2)]
    high = [entropy(tokenize(generator.generate("a", 150, 2.0, seed=s), VOCAB)[1:]) for s in range(2)]
    assert max(low) < min(high) - 0.3


def test_sample_draws_from_the_tempered_distribution():
    p_k = np.array([0.5, 0.3, 0.15, 0.05])
    rng = np.random.default_rng(0)
    for temperature in (0.5, 1.0, 2.0):
        q_k = p_k ** (1 / temperature)
        q_k /= q_k.sum()
        draws = np.bincount([sample(p_k, temperature, rng) for _ in range(4000)], minlength=4) / 4000
        np.testing.assert_allclose(draws, q_k, atol=0.03)
    assert sample(np.array([0.0, 1.0, 0.0]), 1.0, rng) == 1


@pytest.mark.parametrize("temperature", ["0", "-0.5", "nan"])
def test_the_command_refuses_a_temperature_not_above_zero(workspace, capsys, temperature):
    with pytest.raises(SystemExit) as exit_info:
        gen.main([workspace, "--prime", "ab", "--length", "3", "--temperature", temperature])
    assert exit_info.value.code == 2
    assert "--temperature must be > 0" in capsys.readouterr().err


def test_a_prime_with_unknown_symbols_is_refused_listing_them(generator, workspace, capsys):
    with pytest.raises(GenerationError, match="outside the vocabulary: 'x', 'y', 'é'"):
        generator.generate("axbyxé", 3, 1.0)
    with pytest.raises(GenerationError, match="prime is empty"):
        generator.generate("", 3, 1.0)
    with pytest.raises(SystemExit):
        gen.main([workspace, "--prime", "zz", "--length", "3"])
    assert "outside the vocabulary: 'z'" in capsys.readouterr().err


def test_the_command_prints_the_prime_and_the_sampled_text(workspace, capsys):
    assert gen.main([workspace, "--prime", "bth", "--length", "12", "--temperature", "0.7",
                     "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed == Generator.load(workspace).generate("bth", 12, 0.7, seed=4) + "\n"


def test_a_model_without_token_inputs_or_vocab_cannot_generate(tmp_path):
    real = write_workspace(tmp_path / "real", target_dim=3, output_activation="softmax")
    with pytest.raises(GenerationError, match="not a token model"):
        Generator.load(real, mode=MODE)
    plain = write_workspace(tmp_path / "l2", input_dim=1, target_dim=6, vocab_size=6)
    write_vocab(os.path.join(plain, "vocab.json"), VOCAB)
    with pytest.raises(GenerationError, match="needs softmax outputs over the 6 tokens"):
        Generator.load(plain, mode=MODE)
    novocab = write_workspace(tmp_path / "nv", input_dim=1, target_dim=6, vocab_size=6,
                              output_activation="softmax")
    with pytest.raises(GenerationError, match="vocab.json: missing"):
        Generator.load(novocab, mode=MODE)
    write_vocab(os.path.join(novocab, "vocab.json"), {"a": 0, "b": 1})
    with pytest.raises(GenerationError, match=r"no symbol for token indices \[2, 3, 4, 5\]"):
        Generator.load(novocab, mode=MODE)
