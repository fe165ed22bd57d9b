"""The ``arithmetic`` task: expressions held out by string, the precedence of its
answers, its vocab.json and sequence layout, bad options, and a short run that
answers held-out expressions far above always giving the most frequent answer, the
same teacher-forced and decoded greedily through sophia-generate's step."""
import io
import re

import numpy as np
import pytest

from sophia.data import cli as data_cli
from sophia.data.dataset import Dataset, check_dataset, check_targets
from sophia.data.make import make_dataset
from sophia.data.tasks import arithmetic
from sophia.data.vocab import read_vocab
from sophia.evaluation.inference import run_model
from sophia.evaluation.metrics import exact_match
from sophia.options import ModelOptions, TrainOptions
from sophia.serving.generate import Generator
from sophia.serving.model import load_model
from sophia.training.trainer import Trainer

SYMBOLS = arithmetic.SYMBOLS


def by_cases(a, p, b, q, c):
    """The value of ``a p b q c`` from the four operator cases, written out."""
    return {("+", "+"): a + b + c, ("+", "*"): a + b * c,
            ("*", "+"): a * b + c, ("*", "*"): a * b * c}[p, q]


def decode(root, split):
    """``[(text read, answer predicted from the '=' frame on)]`` of a dataset split."""
    data = Dataset.open(str(root), split, 1, len(SYMBOLS))
    rows = []
    for i in range(len(data)):
        target_tk = np.asarray(data.target(i))
        judged_t = ~np.isnan(target_tk).all(axis=1)
        read = "".join(SYMBOLS[int(x)] for x in data.input(i)[:, 0])
        rows.append((read, "".join(SYMBOLS[k] for k in target_tk[judged_t].argmax(axis=1)),
                     int(np.argmax(judged_t))))
    return rows


def test_answers_follow_the_standard_precedence():
    pool = arithmetic.expressions(10)
    assert len(pool) == len(set(pool)) == 10 * 10 * 10 * 4
    for expression in pool:
        a, p, b, q, c = re.fullmatch(r"(\d+)([+*])(\d+)([+*])(\d+)", expression).groups()
        assert arithmetic.value(expression) == by_cases(int(a), p, int(b), q, int(c))
    assert arithmetic.value("3+7*2") == 17 and arithmetic.value("10*10*10") == 1000


def test_held_out_expressions_never_appear_in_train(tmp_path):
    assert make_dataset("arithmetic", tmp_path / "d", seed=5) == {"train": 3200, "dev": 400, "test": 400}
    splits = {split: decode(tmp_path / "d", split) for split in ("train", "dev", "test")}
    expressions = {split: [read.split("=")[0] for read, _, _ in rows] for split, rows in splits.items()}
    train, dev, test = (set(expressions[s]) for s in ("train", "dev", "test"))
    assert not train & dev and not train & test and not dev & test
    assert train | dev | test == set(arithmetic.expressions(10))
    for rows in splits.values():
        for read, answer, first_target in rows:      # EXPRESSION=ANSWER less the end symbol
            expression = read.split("=")[0]
            assert read == f"{expression}={arithmetic.value(expression)}"[:len(read)]
            assert answer == f"{arithmetic.value(expression)}." and first_target == len(expression)
    make_dataset("arithmetic", tmp_path / "again", seed=5)
    make_dataset("arithmetic", tmp_path / "other", seed=6)
    for name in ("train.list", "test/000007.input", "dev/000123.target", "vocab.json"):
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert set(r[0] for r in decode(tmp_path / "other", "test")) != set(r[0] for r in splits["test"])


def test_the_vocabulary_and_the_layout_of_a_sequence(tmp_path):
    assert data_cli.main(["make", "arithmetic", "--out", str(tmp_path / "d"), "--max-operand", "4"]) == 0
    vocab = read_vocab(tmp_path / "d" / "vocab.json")
    assert vocab == arithmetic.VOCAB and sorted(vocab) == sorted("0123456789+*=.")
    assert [s for s, _ in sorted(vocab.items(), key=lambda item: item[1])] == list(SYMBOLS)
    summary = check_dataset(str(tmp_path / "d"), vocab_size=len(vocab))
    assert (summary.input_dim, summary.target_dim) == (1, 14)
    for split in ("train", "dev", "test"):
        check_targets(Dataset.open(str(tmp_path / "d"), split, 1, 14), "xent")
    input_t1, target_tk = arithmetic.encode("3+7*2", vocab)
    assert [SYMBOLS[int(x)] for x in input_t1[:, 0]] == list("3+7*2=17")
    assert np.isnan(target_tk[:5]).all()
    np.testing.assert_array_equal(target_tk[5:], np.eye(14)[[vocab["1"], vocab["7"], vocab["."]]])
    input_t1, target_tk = arithmetic.encode("3+7*2", vocab, reads=2)      # the question twice
    assert [SYMBOLS[int(x)] for x in input_t1[:, 0]] == list("3+7*2=3+7*2=17")
    assert np.isnan(target_tk[:11]).all() and arithmetic.question("3+7*2", 2) == "3+7*2=3+7*2="
    np.testing.assert_array_equal(target_tk[11:], np.eye(14)[[vocab["1"], vocab["7"], vocab["."]]])


@pytest.mark.parametrize("options, reason", [
    ({"max_operand": 0}, "--max-operand must be >= 1"),
    ({"holdout_fraction": 0.0}, "--holdout-fraction must be in (0, 1)"),
    ({"holdout_fraction": 1.0}, "--holdout-fraction must be in (0, 1)"),
    ({"max_operand": 1, "holdout_fraction": 0.2}, "at least 2 of the 4 expressions held out"),
    ({"reads": 0}, "--reads must be >= 1"),
])
def test_bad_options_are_refused(tmp_path, capsys, options, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        make_dataset("arithmetic", tmp_path / "d", **options)
    flags = [a for name, value in options.items() for a in (f"--{name.replace('_', '-')}", str(value))]
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["make", "arithmetic", "--out", str(tmp_path / "e"), *flags])
    assert exit_info.value.code == 2 and reason in capsys.readouterr().err


def test_a_short_run_answers_held_out_expressions_far_above_the_majority_answer(tmp_path):
    make_dataset("arithmetic", tmp_path / "d", seed=1, max_operand=4, holdout_fraction=0.3)
    Trainer(ModelOptions(unit_type="gru", net_width=64, net_depth=1, vocab_size=14,
                         token_embedding_dim=8),
            TrainOptions(loss_type="xent", batch_size=16, window_size=20, step_size=10,
                         frames_per_epoch=4000, max_epochs=15, compile_mode="FAST_COMPILE",
                         lr_init_val=0.01),
            str(tmp_path / "d"), str(tmp_path / "ws"), out=io.StringIO()).run()
    test = Dataset.open(str(tmp_path / "d"), "test", 1, 14)
    outputs = run_model(load_model(tmp_path / "ws", mode="FAST_COMPILE"), test, [])
    targets = [test.target(i) for i in range(len(test))]
    forced = exact_match(outputs, targets)
    expressions = [read.split("=")[0] for read, _, _ in decode(tmp_path / "d", "test")]
    train_values = [arithmetic.value(read.split("=")[0]) for read, _, _ in decode(tmp_path / "d", "train")]
    values, counts = np.unique(train_values, return_counts=True)
    majority = np.mean([arithmetic.value(e) == values[np.argmax(counts)] for e in expressions])
    assert forced["sequences"] == len(expressions) == 39
    # 179 training expressions, 15 epochs of seconds: about 1/3 of the held-out ones right
    assert forced["exact_match"] >= max(0.2, 3 * majority), (forced, majority)

    # Teacher-forced exact match is the greedy answers' exact match, sequence by sequence.
    generator = Generator.load(str(tmp_path / "ws"), mode="FAST_COMPILE")
    for expression, output_tk, target_tk in zip(expressions, outputs, targets):
        answer = f"{arithmetic.value(expression)}."
        greedy = generator.generate(expression + "=", len(answer), 1e-4, seed=0)[len(expression) + 1:]
        forced_right = exact_match([output_tk], [target_tk])["num_exact"] == 1
        assert (greedy == answer) == forced_right, (expression, greedy)
