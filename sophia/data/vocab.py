"""A dataset's vocabulary: ``vocab.json`` maps each symbol to its token index.

A dataset of token inputs (``ModelOptions.vocab_size`` > 0) may ship
``vocab.json`` at its root: one JSON object ``{"symbol": index, ...}`` whose keys
are non-empty strings and whose values are distinct integers in
``[0, vocab_size)``. Training copies it into the workspace with the other
preprocessing files (:meth:`sophia.workspace.Workspace.copy_preprocessing`);
``sophia-generate`` reads it there to turn text into tokens and back.

What is here:

- :data:`VOCAB_FILE` -- the file name, ``vocab.json``.
- :func:`parse_vocab` -- check a parsed object, return ``{symbol: index}``.
- :func:`read_vocab` -- read and check a ``vocab.json``.
- :func:`write_vocab` -- write one (symbols in index order, UTF-8).
- :func:`symbols_by_index` -- the inverse map, a list indexed by token.

Example
-------
>>> parse_vocab({"a": 0, "b": 1}, "vocab.json", vocab_size=2)
{'a': 0, 'b': 1}
>>> symbols_by_index({"a": 0, "b": 1}, 2)
['a', 'b']
"""
from __future__ import annotations

import json
import os

from sophia.data.dataset import DatasetError

VOCAB_FILE = "vocab.json"


def parse_vocab(obj, source: str, vocab_size: int = 0) -> dict[str, int]:
    """Check a parsed ``vocab.json`` and return it as ``{symbol: index}``.

    Parameters
    ----------
    obj : object
        What ``json.loads`` gave.
    source : str
        The file, for messages.
    vocab_size : int, optional
        With a value > 0, every index must be below it.

    Raises
    ------
    DatasetError
        Naming ``source`` and every problem: not an object, an empty symbol, an
        index that is not a non-negative integer or not below ``vocab_size``, two
        symbols with one index.
    """
    if not isinstance(obj, dict) or not obj:
        raise DatasetError(f"{source}: expected a non-empty JSON object {{\"symbol\": index, ...}}")
    problems, seen = [], {}
    for symbol, index in obj.items():
        if not symbol:
            problems.append(f"{source}: an empty symbol")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            problems.append(f"{source}: symbol {symbol!r} has index {index!r}, expected an "
                            "integer >= 0")
            continue
        if vocab_size and index >= vocab_size:
            problems.append(f"{source}: symbol {symbol!r} has index {index}, outside "
                            f"[0, {vocab_size}) (vocab_size {vocab_size})")
        if index in seen:
            problems.append(f"{source}: symbols {seen[index]!r} and {symbol!r} share index {index}")
        seen.setdefault(index, symbol)
    if problems:
        raise DatasetError(problems)
    return dict(obj)


def read_vocab(path: str | os.PathLike, vocab_size: int = 0) -> dict[str, int]:
    """Read and check ``path`` (a ``vocab.json``); see :func:`parse_vocab`.

    Raises DatasetError naming the file if it cannot be read or is not JSON.
    """
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read a vocabulary: {error}") from None
    return parse_vocab(obj, str(path), vocab_size)


def write_vocab(path: str | os.PathLike, vocab: dict[str, int]) -> None:
    """Write ``vocab`` as ``vocab.json`` (UTF-8, symbols in index order).
    Side effect: creates or replaces ``path``."""
    ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(ordered, f, ensure_ascii=False, indent=0)
        f.write("\n")


def symbols_by_index(vocab: dict[str, int], vocab_size: int) -> list[str]:
    """``symbols[index]`` for every index in ``[0, vocab_size)``.

    Raises DatasetError listing the indices that have no symbol.
    """
    symbols = [None] * vocab_size
    for symbol, index in vocab.items():
        if index < vocab_size:
            symbols[index] = symbol
    missing = [i for i, s in enumerate(symbols) if s is None]
    if missing:
        raise DatasetError(f"{VOCAB_FILE}: no symbol for token indices {missing[:20]}"
                           f"{' ...' if len(missing) > 20 else ''} of [0, {vocab_size})")
    return symbols
