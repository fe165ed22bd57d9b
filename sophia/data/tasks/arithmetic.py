"""Arithmetic on strings: ``3+7*2`` -> ``17``, read and answered one character a frame.

Every expression is three integers in [1, ``--max-operand``] (default 10) joined by
``+`` or ``*``, evaluated with the standard precedence (``*`` before ``+``): with 10,
10·10·10·4 = 4000 distinct expressions. They are shuffled with the seed and split
by the expression string: a ``--holdout-fraction`` (0.2) of them is held out, its
first half for dev and its second half for test; train holds every other
expression once. No dev or test expression appears in train.

A sequence is the text ``EXPRESSION=ANSWER.`` (``.`` ends the answer) read as
next-character prediction with teacher forcing: frame i has input = the index of
character i and target = character i + 1, one-hot over the vocabulary, but only
from the frame that reads ``=`` on; every frame that reads the expression has a NaN
target (nothing to predict yet). So ``3+7*2=17.`` has 8 frames, inputs
``3+7*2=17`` and targets ``- - - - - 1 7 .``. While answering, the input is the
previous answer character: the model learns the answer's characters one after
another as ``sophia-generate`` (and a serving client) produce them, by feeding
back each prediction, so ``sophia-generate WORKSPACE --prime "3+7*2=" --length 3
--temperature 0.01`` answers greedily. Because every frame is conditioned on the
true previous characters, a sequence whose every target frame has the right
argmax is exactly a sequence that greedy decoding answers right: teacher-forced
exact match is the exact match of free-running greedy answers.

``--reads R`` (default 1) writes the question R times before the answer,
``3+7*2=3+7*2=17.``, with targets from the last ``=`` on: a causal net reads the
expression a second time already knowing all of it (which operator follows an
operand, so where ``*`` binds), as Zaremba & Sutskever's *Learning to Execute*
(2014) fed its programs twice. The prime is then ``3+7*2=3+7*2=``.

The vocabulary, written as ``vocab.json``, is :data:`SYMBOLS` numbered in code
point order (``*`` 0, ``+`` 1, ``.`` 2, ``0``-``9`` 3-12, ``=`` 13). Train on it
with ``vocab_size`` 14 and ``loss_type = "xent"``.

Input [t][1] (token indices), target [t][14].

Example
-------
>>> value("3+7*2"), value("2*3+4"), value("10*10*10")
(17, 10, 1000)
>>> input_t1, target_tk = encode("3+7*2", VOCAB)
>>> "".join(SYMBOLS[int(i)] for i in input_t1[:, 0])
'3+7*2=17'
>>> "".join(SYMBOLS[k] for k in target_tk[5:].argmax(axis=1))
'17.'
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from sophia.data.vocab import VOCAB_FILE, write_vocab

from .common import sequence_path

SUMMARY = "three integers joined by + or * (3+7*2 -> 17), answered character by character"
OPERATORS = ("+", "*")
EQUALS, END = "=", "."
SYMBOLS = tuple(sorted("0123456789" + "".join(OPERATORS) + EQUALS + END))   # index -> symbol
VOCAB = {symbol: index for index, symbol in enumerate(SYMBOLS)}


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--max-operand", type=int, default=10,
                        help="operands are the integers 1..this (default 10: 4000 expressions)")
    parser.add_argument("--reads", type=int, default=1,
                        help="times each expression (with its =) is read before the answer; "
                             "default 1")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="fraction of the expressions kept out of train, half for dev and "
                             "half for test; default 0.2")


def expressions(max_operand: int = 10) -> list[str]:
    """Every expression ``a?b?c`` (a, b, c in [1, max_operand], ? in + and *), in a fixed order."""
    operands = range(1, max_operand + 1)
    return [f"{a}{p}{b}{q}{c}" for a, p, b, q, c
            in itertools.product(operands, OPERATORS, operands, OPERATORS, operands)]


def value(expression: str) -> int:
    """The value of a sum of products of positive integers (``*`` binds tighter than ``+``)."""
    return sum(math.prod(int(factor) for factor in term.split("*")) for term in expression.split("+"))


def question(expression: str, reads: int = 1) -> str:
    """What is read before the answer: ``EXPRESSION=`` ``reads`` times (the prime)."""
    return f"{expression}{EQUALS}" * reads


def encode(expression: str, vocab: dict[str, int], reads: int = 1):
    """``(input_t1, target_tk)`` of ``EXPRESSION=ANSWER.`` (the question read ``reads``
    times; see the module docstring): float32 token indices, and one-hot next
    characters from the last ``=`` frame on, NaN before."""
    asked = question(expression, reads)
    text = f"{asked}{value(expression)}{END}"
    tokens = np.array([vocab[c] for c in text])
    target_tk = np.full((len(text) - 1, len(vocab)), np.nan, dtype=np.float32)
    answering = np.arange(len(asked) - 1, len(text) - 1)            # frames reading the last '=' and the answer
    target_tk[answering] = np.eye(len(vocab), dtype=np.float32)[tokens[answering + 1]]
    return tokens[:-1, None].astype(np.float32), target_tk


def split_expressions(rng, max_operand: int = 10, holdout_fraction: float = 0.2) -> dict[str, list[str]]:
    """``{"train": [...], "dev": [...], "test": [...]}``: every expression once, shuffled by
    ``rng``; the held-out fraction split in half between dev and test.

    Raises ValueError on a ``max_operand`` below 1 or a fraction that leaves a split empty.
    """
    if max_operand < 1:
        raise ValueError(f"--max-operand must be >= 1, got {max_operand}")
    pool = expressions(max_operand)
    shuffled = [pool[i] for i in rng.permutation(len(pool))]
    n_held = int(round(len(pool) * holdout_fraction))
    if not 0 < holdout_fraction < 1 or n_held < 2 or n_held >= len(pool):
        raise ValueError(f"--holdout-fraction must be in (0, 1) and leave at least 2 of the "
                         f"{len(pool)} expressions held out and 1 for train; got {holdout_fraction}")
    n_dev = n_held // 2
    return {"train": shuffled[n_held:], "dev": shuffled[:n_dev], "test": shuffled[n_dev:n_held]}


def write_dataset(writer, rng, max_operand=10, holdout_fraction=0.2, reads=1):
    """Write every expression to its split, and ``vocab.json``.

    Parameters
    ----------
    writer : sophia.data.writer.DatasetWriter
        Side effect: receives every sequence, and ``vocab.json`` at its root.
    rng : numpy.random.Generator
        Shuffles the expressions (so chooses the held-out ones).
    max_operand, holdout_fraction
        As for :func:`split_expressions`.
    reads : int
        Times the question is read (>= 1), as for :func:`encode`.

    Raises ValueError on ``reads`` below 1, and as :func:`split_expressions`.
    """
    if reads < 1:
        raise ValueError(f"--reads must be >= 1, got {reads}")
    for split, members in split_expressions(rng, max_operand, holdout_fraction).items():
        for index, expression in enumerate(members):
            writer.add(split, sequence_path(split, index), *encode(expression, VOCAB, reads))
    write_vocab(writer.root / VOCAB_FILE, VOCAB)
