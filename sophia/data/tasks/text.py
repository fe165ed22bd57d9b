"""Characters of a UTF-8 text, next-character prediction on token inputs.

The text is ``--corpus``: a UTF-8 file, or the name of a built-in corpus
(:data:`CORPORA`). The default, ``python-reference``, is the English text of the
Python reference's topics that every CPython installs for ``help()``
(``pydoc_data.topics``, under the Python Software Foundation licence), read from the
running interpreter, topic by topic in name order: about 465,000 characters, of which
``--max-chars`` (50,000) are used. Nothing is downloaded and nothing is copied into
Sophia.

The vocabulary is every distinct character of the whole text, numbered in code
point order, and written to the dataset root as ``vocab.json`` (``{"a": 36, ...}``,
:mod:`sophia.data.vocab`). The text is split by position: the first
``1 - dev - test`` fraction of its characters for training, the next ``dev``
fraction for dev, the last ``test`` fraction for test. Each split is cut into
consecutive sequences of ``--length`` frames (the last of a split may be shorter).
Frame i of a sequence has input = the index of character i (``input_dim`` 1) and
target = the next character, one-hot over the vocabulary (``target_dim`` = the
vocabulary size); every frame has a target.

Train on it with token inputs and softmax outputs: ``vocab_size`` = the vocabulary
size (the README's target width), ``loss_type = "xent"``; the dev loss in nats per
character over ln 2 is bits per character. ``sophia-generate`` samples from the
trained workspace.

Input [t][1] (token indices), target [t][vocab size].

Example
-------
>>> vocab = vocabulary("abca")
>>> vocab
{'a': 0, 'b': 1, 'c': 2}
>>> split, input_t1, target_tk = next(sequences("abcab", vocab, length=2, dev_fraction=0, test_fraction=0))
>>> split, input_t1.ravel().tolist(), target_tk.argmax(axis=1).tolist()
('train', [0.0, 1.0], [1, 2])
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sophia.data.vocab import VOCAB_FILE, write_vocab

from .common import one_hot, sequence_path

SUMMARY = "characters of a UTF-8 text (a built-in corpus or --corpus FILE), next-character targets"
DEFAULT_CORPUS = "python-reference"


def _python_reference() -> str:
    """The Python reference's topics as installed with the interpreter, in name order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[name].strip() for name in sorted(topics))


CORPORA = {DEFAULT_CORPUS: _python_reference}     # built-in corpora: name -> text


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--corpus", default=DEFAULT_CORPUS,
                        help=f"a built-in corpus ({', '.join(CORPORA)}; default {DEFAULT_CORPUS}) "
                             "or the path of a UTF-8 text file")
    parser.add_argument("--max-chars", type=int, default=50_000,
                        help="use the first this many characters of the text; 0 = all; default 50000")
    parser.add_argument("--length", type=int, default=100,
                        help="frames (characters) per sequence; default 100")
    parser.add_argument("--dev-fraction", type=float, default=0.1,
                        help="fraction of the text for dev (after train); default 0.1")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="fraction of the text for test (the end); default 0.1")


def read_corpus(corpus: str, max_chars: int = 0) -> str:
    """The text of ``corpus`` (a name of :data:`CORPORA`, else a file path), cut to its
    first ``max_chars`` characters where ``max_chars`` > 0.

    Raises ValueError naming the file if it is missing, not UTF-8 or has fewer than
    two characters, and for a negative ``max_chars``.
    """
    if max_chars < 0:
        raise ValueError(f"--max-chars must be >= 0 (0 = the whole text), got {max_chars}")
    path = Path(corpus)
    try:
        text = CORPORA[corpus]() if corpus in CORPORA else path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--corpus {path}: cannot read it: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--corpus {path}: not UTF-8 text (byte {error.start}: "
                         f"{error.reason})") from None
    text = text[:max_chars] if max_chars else text
    if len(text) < 2:
        raise ValueError(f"--corpus {path}: needs at least 2 characters, has {len(text)}")
    return text


def vocabulary(text: str) -> dict[str, int]:
    """``{character: index}`` over the distinct characters of ``text``, in code point order."""
    return {c: n for n, c in enumerate(sorted(set(text)))}


def sequences(text, vocab, length=100, dev_fraction=0.1, test_fraction=0.1):
    """Split ``text`` by position and cut each split into next-character sequences.

    Yields ``(split, input_t1, target_tk)``, train first, in text order: float32 token
    indices [t][1] and one-hot next characters [t][len(vocab)]. Raises ValueError on
    bad options or a training split too short for one frame.
    """
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ValueError("dev and test fractions must be in [0, 1) with a sum below 1, "
                         f"got {dev_fraction}, {test_fraction}")
    tokens = np.array([vocab[c] for c in text])
    n_test, n_dev = int(round(len(tokens) * test_fraction)), int(round(len(tokens) * dev_fraction))
    n_train = len(tokens) - n_dev - n_test
    if n_train < 2:
        raise ValueError(f"the training split has {n_train} characters; it needs at least 2")
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev),
              "test": (n_train + n_dev, len(tokens))}
    for split, (begin, end) in bounds.items():
        for start in range(begin, end - 1, length):    # L frames read L + 1 characters
            chunk = tokens[start:min(start + length + 1, end)]
            yield split, chunk[:-1, None].astype(np.float32), one_hot(chunk[1:], len(vocab))


def write_dataset(writer, rng, corpus=DEFAULT_CORPUS, max_chars=50_000, length=100, dev_fraction=0.1,
                  test_fraction=0.1):
    """Read ``corpus``, write its sequences and ``vocab.json``.

    Parameters
    ----------
    writer : sophia.data.writer.DatasetWriter
        Side effect: receives every sequence, and ``vocab.json`` at its root.
    rng : numpy.random.Generator
        Unused: the dataset follows from the text alone.
    corpus, max_chars, length, dev_fraction, test_fraction
        As for :func:`read_corpus` and :func:`sequences`.
    """
    text = read_corpus(corpus, max_chars)
    vocab = vocabulary(text)
    counts = {}
    for split, input_t1, target_tk in sequences(text, vocab, length, dev_fraction, test_fraction):
        index = counts[split] = counts.get(split, -1) + 1
        writer.add(split, sequence_path(split, index), input_t1, target_tk)
    write_vocab(writer.root / VOCAB_FILE, vocab)
