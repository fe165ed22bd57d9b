"""``sophia-generate``: sample text from a token model, through the serving step.

``sophia-generate WORKSPACE [WORKSPACE ...] --prime TEXT --length N --temperature T
[--seed S]`` loads a workspace's token model (``vocab_size`` > 0, softmax outputs over the
``vocab_size`` tokens: trained with ``loss_type = "xent"`` to predict the next
token) and its ``vocab.json``; feeds the prime one token a frame; then ``N`` times
samples the next token from ``softmax(log p / T)`` of the model's last output
``p`` and feeds it back. It prints the prime followed by the sampled symbols
(symbols are concatenated as they are: a character vocabulary gives text).

Several workspaces generate as one ensemble: ``p`` is the mean of the members'
probabilities (:func:`sophia.evaluation.ensemble.combine`, the rule
``sophia-eval`` scores an ensemble by). The members must share one vocabulary.

Every frame goes through :meth:`sophia.serving.ensemble.Ensemble.step`, the step
the server runs for a client (here an ensemble of the given models and one
stream): the sampled text is what a client of ``sophia.py`` would get.

Contents
--------
- :class:`GenerationError` -- a model, prime or setting that cannot generate.
- :func:`tokenize` -- text to token indices (longest symbol first).
- :func:`sample` -- one draw from ``softmax(log p / T)``.
- :class:`Generator` -- loaded models and their vocabulary; :meth:`Generator.generate`.
- :func:`main` -- the command line.

The same seed, model and arguments give the same text. ``T`` < 1 sharpens the
distribution (T → 0: always the likeliest token), ``T`` > 1 flattens it.

Example
-------
>>> generator = Generator.load("models/text_gru")             # doctest: +SKIP
>>> generator.generate("The ", length=40, temperature=0.5, seed=1)   # doctest: +SKIP
'The sea was ...'
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from sophia.data.vocab import symbols_by_index
from sophia.data.dataset import DatasetError
from sophia.evaluation.ensemble import combine
from sophia.serving.ensemble import Ensemble
from sophia.serving.model import MODE, load_model
from sophia.serving.paths import ModelLoadError
from sophia.workspace import Workspace, WorkspaceError, load_model_options, load_vocab

TINY = 1e-30                       # log p of a probability that rounded to 0


class GenerationError(ValueError):
    """The model, the prime or a setting cannot generate; the message says why."""


def tokenize(text: str, vocab: dict[str, int]) -> list[int]:
    """Token indices of ``text``, matching the longest symbol at each position.

    Raises GenerationError listing every character no symbol starts with.
    """
    longest = max(len(symbol) for symbol in vocab)
    tokens, unknown, i = [], [], 0
    while i < len(text):
        for n in range(min(longest, len(text) - i), 0, -1):
            if text[i:i + n] in vocab:
                tokens.append(vocab[text[i:i + n]])
                i += n
                break
        else:
            unknown.append(text[i])
            i += 1
    if unknown:
        listing = ", ".join(repr(c) for c in dict.fromkeys(unknown))
        raise GenerationError(f"the prime holds symbols outside the vocabulary: {listing}")
    return tokens


def sample(p_k: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One token drawn from ``softmax(log p_k / temperature)`` (float64).

    ``p_k`` are the model's probabilities [K]; a 0 counts as :data:`TINY`.
    """
    z_k = np.log(np.maximum(np.asarray(p_k, np.float64), TINY)) / temperature
    q_k = np.exp(z_k - z_k.max())
    return int(rng.choice(len(q_k), p=q_k / q_k.sum()))


class Generator:
    """Token models and their symbols, ready to generate.

    Parameters
    ----------
    models : Model or sequence of Model
        Each with ``vocab_size`` > 0 and ``target_dim == vocab_size``; several
        generate as one ensemble (the mean of their probabilities).
    vocab : dict of str to int
        ``{symbol: index}``, a symbol for every index in ``[0, vocab_size)``.
    names : str or sequence of str
        The workspaces, for messages; one per model.

    Raises
    ------
    GenerationError
        For a model without token inputs, outputs that are not one probability per
        token, members that differ in vocab_size, or a vocabulary that leaves an
        index without a symbol.
    """

    def __init__(self, models, vocab: dict[str, int], names="model"):
        models = list(models) if isinstance(models, (list, tuple)) else [models]
        names = [names] if isinstance(names, str) else list(names)
        for model, name in zip(models, names):
            _check_model(model, name)
        sizes = {name: model.vocab_size for model, name in zip(models, names)}
        if len(set(sizes.values())) > 1:
            raise GenerationError("the workspaces differ in vocab_size: " + ", ".join(
                f"{name!r}: {size}" for name, size in sizes.items()))
        try:
            self.symbols = symbols_by_index(vocab, models[0].vocab_size)
        except DatasetError as error:
            raise GenerationError(f"{names[0]}: {error}") from None
        self.models, self.vocab, self.names = models, vocab, names

    @classmethod
    def load(cls, workspaces, mode: str = MODE) -> "Generator":
        """Load one workspace's model, or several as an ensemble
        (:func:`~sophia.serving.model.load_model`), and the ``vocab.json`` they share.

        Raises GenerationError naming the file for a model or vocabulary that does
        not load, or the two workspaces whose vocabularies differ.
        """
        one = isinstance(workspaces, (str, os.PathLike))
        workspaces = [str(w) for w in ([workspaces] if one else workspaces)]
        models, vocab = [], None
        try:
            for workspace in workspaces:
                models.append(_check_model(load_model(workspace, mode=mode), workspace))
                ws = Workspace(workspace, create=False)
                own = load_vocab(ws, load_model_options(ws))
                if vocab is not None and own != vocab:
                    raise GenerationError(f"{workspace}: its vocab.json differs from "
                                          f"{workspaces[0]}'s; an ensemble's members share one")
                vocab = own
        except (ModelLoadError, WorkspaceError) as error:
            raise GenerationError(str(error)) from None
        return cls(models, vocab, workspaces)

    def generate(self, prime: str, length: int, temperature: float, seed: int | None = None) -> str:
        """The prime followed by ``length`` sampled symbols.

        The prime is fed frame by frame from the initial state; each sampled token
        is fed back (to every member of an ensemble). Raises GenerationError for an
        empty prime or one with symbols outside the vocabulary, ``length`` < 0, or
        ``temperature`` <= 0.
        """
        if not temperature > 0:
            raise GenerationError(f"--temperature must be > 0, got {temperature}")
        if length < 0:
            raise GenerationError(f"--length must be >= 0, got {length}")
        if not prime:
            raise GenerationError("the prime is empty: give at least one symbol to start from")
        tokens = tokenize(prime, self.vocab)
        rng = np.random.default_rng(seed)
        ensemble = Ensemble(self.names, self.models, [[0]] * len(self.models))
        frame_nbj = np.zeros((len(self.models), 1, 1), np.float32)
        options = self.models[0].net.options
        sampled = []
        for n in range(len(tokens) + length - 1):
            frame_nbj[:, 0, 0] = tokens[n] if n < len(tokens) else sampled[-1]
            p_k = combine(ensemble.step(frame_nbj)[:, :1], options)[0]     # [N][1][K] → [K]
            if n + 1 >= len(tokens):
                sampled.append(sample(p_k, temperature, rng))
        return prime + "".join(self.symbols[t] for t in sampled)


def _check_model(model, name: str):
    """``model`` if it takes tokens and returns one probability per token; else
    GenerationError naming ``name``."""
    activation = model.net.options.output_activation
    if not model.vocab_size:
        raise GenerationError(f"{name}: not a token model (vocab_size 0): its inputs are "
                              "real vectors")
    if model.target_dim != model.vocab_size or activation != "softmax":
        raise GenerationError(f"{name}: generation needs softmax outputs over the "
                              f"{model.vocab_size} tokens (loss_type xent, target_dim = "
                              f"vocab_size); this model has {model.target_dim} {activation} outputs")
    return model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophia-generate", description=__doc__.split("\n")[0])
    parser.add_argument("workspace", nargs="+", help="a trained token model's workspace (with "
                        "vocab.json); several generate as one ensemble")
    parser.add_argument("--prime", required=True, help="text to start from (at least one symbol)")
    parser.add_argument("--length", type=int, required=True, help="number of symbols to sample")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="> 0: sample from softmax(log p / T); default 1")
    parser.add_argument("--seed", type=int, default=None, help="random seed; default: fresh")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sophia-generate``; print the text and return 0, or exit with status 2 and
    the reason for a bad argument, workspace or prime."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if not args.temperature > 0:              # before the model compiles
            raise GenerationError(f"--temperature must be > 0, got {args.temperature}")
        generator = Generator.load(args.workspace)
        text = generator.generate(args.prime, args.length, args.temperature, args.seed)
    except GenerationError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
