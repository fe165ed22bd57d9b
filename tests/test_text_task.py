"""The ``text`` task: characters of a UTF-8 text as token sequences with a vocab.json,
the built-in corpus, and a short run from it to ``sophia-generate``."""
import io
import json
import re

import numpy as np
import pytest

from bench_modules import load_bench
from sophia.data import cli as data_cli
from sophia.data.dataset import Dataset, check_dataset
from sophia.data.make import make_dataset
from sophia.data.tasks import text
from sophia.data.vocab import read_vocab
from sophia.options import ModelOptions, TrainOptions
from sophia.serving.generate import Generator
from sophia.training.trainer import Trainer


def split_text(root, split, symbols):
    """The characters a split's sequences read, in order, and the ones they predict."""
    data = Dataset.open(str(root), split)
    read, predicted = [], []
    for i in range(len(data)):
        read += [symbols[int(x)] for x in data.input(i)[:, 0]]
        predicted += [symbols[int(k)] for k in data.target(i).argmax(axis=1)]
    return "".join(read), "".join(predicted)


def test_a_corpus_file_becomes_next_character_sequences_and_a_vocab(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Ünïcode and plain text, twice: Ünïcode and plain text.\n" * 3, encoding="utf-8")
    written = make_dataset("text", tmp_path / "d", corpus=str(corpus), length=16,
                           dev_fraction=0.2, test_fraction=0.1)
    content = corpus.read_text(encoding="utf-8")
    vocab = read_vocab(tmp_path / "d" / "vocab.json")
    assert vocab == {c: n for n, c in enumerate(sorted(set(content)))}
    symbols = sorted(vocab, key=vocab.get)
    n_test, n_dev = round(len(content) * 0.1), round(len(content) * 0.2)
    n_train = len(content) - n_dev - n_test
    read, predicted = split_text(tmp_path / "d", "train", symbols)
    assert read == content[:n_train - 1] and predicted == content[1:n_train]
    read, predicted = split_text(tmp_path / "d", "test", symbols)
    assert read == content[-n_test:-1] and predicted == content[-n_test + 1:]
    assert written["train"] == -(-(n_train - 1) // 16)
    summary = check_dataset(str(tmp_path / "d"), vocab_size=len(vocab))
    assert (summary.input_dim, summary.target_dim) == (1, len(vocab))


def test_the_built_in_corpus_works_offline(tmp_path, capsys):
    assert data_cli.main(["make", "text", "--out", str(tmp_path / "d"), "--max-chars", "20000"]) == 0
    vocab = json.loads((tmp_path / "d" / "vocab.json").read_text(encoding="utf-8"))
    first_20k = text.read_corpus("python-reference", 20_000)
    assert len(first_20k) == 20_000 and vocab == text.vocabulary(first_20k)
    assert len(text.read_corpus("python-reference")) > 400_000          # every topic of help()
    size = str(len(vocab))
    assert data_cli.main(["check", str(tmp_path / "d"), "--vocab_size", size, "--loss_type", "xent"]) == 0
    assert f"input_dim 1, target_dim {size}" in capsys.readouterr().out


@pytest.mark.parametrize("content, options, reason", [
    (b"\xff\xfe bad", {}, "not UTF-8 text (byte 0"),
    (b"a", {}, "needs at least 2 characters"),
    (b"abcdef", {"length": 0}, "--length must be >= 1"),
    (b"abcdef", {"dev_fraction": 0.6, "test_fraction": 0.5}, "sum below 1"),
    (b"abcdef", {"max_chars": -1}, "--max-chars must be >= 0"),
])
def test_bad_corpora_and_options_are_refused(tmp_path, capsys, content, options, reason):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(reason)):
        make_dataset("text", tmp_path / "d", corpus=str(corpus), **options)
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["make", "text", "--out", str(tmp_path / "e"), "--corpus", str(tmp_path / "nope.txt")])
    assert exit_info.value.code == 2 and "nope.txt: cannot read it" in capsys.readouterr().err


def test_a_short_run_on_the_corpus_generates_text_in_its_vocabulary(tmp_path):
    make_dataset("text", tmp_path / "d", length=50, max_chars=20_000)
    size = len(read_vocab(tmp_path / "d" / "vocab.json"))
    Trainer(ModelOptions(unit_type="gru", net_width=16, net_depth=1, vocab_size=size,
                         token_embedding_dim=8),
            TrainOptions(loss_type="xent", batch_size=8, window_size=25, step_size=25,
                         frames_per_epoch=2000, max_epochs=1, compile_mode="FAST_COMPILE",
                         lr_init_val=0.01),
            str(tmp_path / "d"), str(tmp_path / "ws"), out=io.StringIO()).run()
    generator = Generator.load(str(tmp_path / "ws"), mode="FAST_COMPILE")
    sample = generator.generate("The ", 30, 0.8, seed=2)
    assert sample.startswith("The ") and len(sample) == 34
    assert set(sample) <= set(generator.vocab)
    assert sample == generator.generate("The ", 30, 0.8, seed=2)
    assert len(generator.symbols) == size


def load_bench_text():
    return load_bench("text")


def test_bench_bits_per_character_and_ngram_baselines_on_known_cases(tmp_path):
    bench = load_bench_text()
    uniform = [np.full((3, 4), 0.25)]
    target = np.eye(4)[[0, 1, 2]]
    assert bench.bits_per_character(uniform, [target]) == pytest.approx(2.0)
    target_nan = target.copy()
    target_nan[1] = np.nan
    sure = [np.eye(4)[[0, 3, 2]]]                       # right where judged, wrong at the NaN frame
    assert bench.bits_per_character(sure, [target_nan]) == pytest.approx(0.0)
    corpus = tmp_path / "abab.txt"
    corpus.write_text("ab" * 2000, encoding="utf-8")
    make_dataset("text", tmp_path / "d", corpus=str(corpus), length=50)
    baselines = bench.ngram_baselines(tmp_path / "d", 2)
    assert baselines["unigram"] == pytest.approx(1.0, abs=1e-3)    # a and b equally often
    assert baselines["bigram"] < 0.01                               # b always follows a
