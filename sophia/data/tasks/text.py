"""Characters of a UTF-8 text, next-character prediction on token inputs.

The text is ``--corpus``: a UTF-8 file, or the name of a corpus shipped in
``sophia/data/corpora/`` (:data:`CORPORA`; the default, ``coriolanus``, is the
opening of Shakespeare's *Coriolanus*, public domain, about 40 KB, 58 distinct
characters). Nothing is downloaded.

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

SUMMARY = "characters of a UTF-8 text (a shipped corpus or --corpus FILE), next-character targets"
CORPORA_DIR = Path(__file__).resolve().parent.parent / "corpora"
CORPORA = {"coriolanus": CORPORA_DIR / "coriolanus.txt"}


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--corpus", default="coriolanus",
                        help=f"a shipped corpus ({', '.join(CORPORA)}; default coriolanus) "
                             "or the path of a UTF-8 text file")
    parser.add_argument("--length", type=int, default=100,
                        help="frames (characters) per sequence; default 100")
    parser.add_argument("--dev-fraction", type=float, default=0.1,
                        help="fraction of the text for dev (after train); default 0.1")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="fraction of the text for test (the end); default 0.1")


def read_corpus(corpus: str) -> str:
    """The text of ``corpus``: a name of :data:`CORPORA`, else a file path.

    Raises ValueError naming the file if it is missing, not UTF-8 or has fewer than
    two characters.
    """
    path = CORPORA.get(corpus, Path(corpus))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--corpus {path}: cannot read it: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--corpus {path}: not UTF-8 text (byte {error.start}: "
                         f"{error.reason})") from None
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


def write_dataset(writer, rng, corpus="coriolanus", length=100, dev_fraction=0.1, test_fraction=0.1):
    """Read ``corpus``, write its sequences and ``vocab.json``.

    Parameters
    ----------
    writer : sophia.data.writer.DatasetWriter
        Side effect: receives every sequence, and ``vocab.json`` at its root.
    rng : numpy.random.Generator
        Unused: the dataset follows from the text alone.
    corpus, length, dev_fraction, test_fraction
        As for :func:`read_corpus` and :func:`sequences`.
    """
    text = read_corpus(corpus)
    vocab = vocabulary(text)
    counts = {}
    for split, input_t1, target_tk in sequences(text, vocab, length, dev_fraction, test_fraction):
        index = counts[split] = counts.get(split, -1) + 1
        writer.add(split, sequence_path(split, index), input_t1, target_tk)
    write_vocab(writer.root / VOCAB_FILE, vocab)
