"""Characters: a text config's dev bits per character beside unigram and bigram
baselines, and samples at several temperatures.

It makes the ``text`` task's dataset (``sophia-data make text``: the built-in corpus,
or ``--corpus FILE``), trains ``--config`` through ``train.py``'s command line
(:func:`reproduce.train`), runs the best model over every whole dev sequence
(:func:`reproduce.evaluate_split`, through sophia-eval) and reports, in bits per character (the mean of
``-log2 p(next character)`` over every dev frame):

- the model's;
- a unigram model's: the training split's character frequencies;
- a bigram model's: the training split's next-character frequencies after each
  character;

both baselines add-one smoothed over the vocabulary. Then ``sophia-generate``'s
sampler (:class:`sophia.serving.generate.Generator`, the serving step) writes
``--length`` characters after ``--prime`` at each temperature of ``--temperatures``.
It prints a Markdown block for ``bench/RESULTS.md`` and writes ``<work>/report.json``.

Example
-------
    python bench/text.py --config configs/text_gru.toml --max_hours 0.5
    python bench/text.py --config configs/text_lstm.toml --quick
    python bench/text.py --config configs/text_lstm.toml --max_chars 0 --max_hours 0.3   # the whole corpus
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import reproduce  # noqa: E402  (puts the repository on sys.path)

from sophia.data.dataset import Dataset  # noqa: E402
from sophia.data.vocab import read_vocab  # noqa: E402
from sophia.serving.generate import Generator  # noqa: E402

TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
PRIME = "The "


def bits_per_character(probabilities, targets) -> float:
    """Mean ``-log2 p`` of the target character over every frame with a target.

    ``probabilities`` and ``targets``: lists of [T][V] arrays (outputs, one-hot targets)."""
    p_n = np.concatenate([np.sum(p * np.nan_to_num(t), axis=1)[~np.isnan(t).all(axis=1)]
                          for p, t in zip(probabilities, targets)])
    return float(-np.mean(np.log2(np.maximum(p_n, 1e-30))))


def ngram_baselines(data_dir, vocab_size: int) -> dict:
    """Dev bits per character of add-one-smoothed unigram and bigram models of train."""
    train, dev = (Dataset.open(str(data_dir), s, 1, vocab_size) for s in ("train", "dev"))
    pairs = np.ones((vocab_size, vocab_size))             # [current][next], add-one
    for i in range(len(train)):
        np.add.at(pairs, (train.input(i)[:, 0].astype(int), train.target(i).argmax(axis=1)), 1)
    unigram_v = pairs.sum(axis=0) - vocab_size + 1          # next-character counts, add-one
    unigram_v /= unigram_v.sum()
    bigram_vv = pairs / pairs.sum(axis=1, keepdims=True)
    unigram, bigram = [], []
    for i in range(len(dev)):
        current, following = dev.input(i)[:, 0].astype(int), dev.target(i).argmax(axis=1)
        unigram.append(np.log2(unigram_v[following]))
        bigram.append(np.log2(bigram_vv[current, following]))
    return {"unigram": float(-np.mean(np.concatenate(unigram))),
            "bigram": float(-np.mean(np.concatenate(bigram)))}


def build_parser():
    parser = argparse.ArgumentParser(prog="bench/text.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="configs/text_lstm.toml or text_gru.toml")
    parser.add_argument("--corpus", default="python-reference", help="a built-in corpus or a UTF-8 file")
    parser.add_argument("--max_chars", type=int, help="characters of the corpus used (the text task's "
                        "--max-chars; default: its default, 50,000; 0: all). The vocabulary then "
                        "has another size: vocab_size is set from the dataset's vocab.json")
    parser.add_argument("--work", type=Path, help="data and workspace directory (default: "
                        "sophia-repro/text-CONFIG in the system's temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and sampling seed")
    parser.add_argument("--max_hours", type=float, help="passed to train.py (--set max_hours=)")
    parser.add_argument("--max_epochs", type=int, help="passed to train.py (--set max_epochs=)")
    parser.add_argument("--quick", action="store_true", help="two short epochs: checks the pipeline")
    parser.add_argument("--eval_only", action="store_true", help="report on --work's workspace, no training")
    parser.add_argument("--prime", default=PRIME, help="text the samples start from")
    parser.add_argument("--length", type=int, default=300, help="characters sampled per temperature")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="extra option override for train.py (repeatable)")
    return parser


def main(argv=None) -> dict:
    """Train (unless ``--eval_only``), measure and sample; print and return the report."""
    args = build_parser().parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / "sophia-repro" / f"text-{args.config.stem}"
    work.mkdir(parents=True, exist_ok=True)
    data, ws = work / "data", work / "workspace"
    start = time.monotonic()
    if not args.eval_only:
        corpus = {"corpus": args.corpus} | ({} if args.max_chars is None else {"max_chars": args.max_chars})
        reproduce.make_data("text", data, args.seed, None, **corpus)
        vocab_size = [f"vocab_size={len(read_vocab(data / 'vocab.json'))}"]
        limits = [f"max_epochs={2 if args.quick else args.max_epochs}"] if args.quick or args.max_epochs else []
        limits += [f"max_hours={args.max_hours}"] if args.max_hours else []
        limits += ["frames_per_epoch=4000"] if args.quick else []
        reproduce.train(data, ws, args.config, args.seed, vocab_size + limits + args.set)
    vocab = read_vocab(data / "vocab.json")
    _, outputs, targets = reproduce.evaluate_split(ws, data, "dev")
    generator = Generator.load(str(ws))
    report = {"config": str(args.config), "corpus": args.corpus, "max_chars": args.max_chars,
              "vocab_size": len(vocab),
              "dev_bpc": bits_per_character(outputs, targets), **{
                  f"{name}_bpc": value for name, value in ngram_baselines(data, len(vocab)).items()},
              "train_seconds": reproduce.train_seconds(ws), "seed": args.seed,
              "samples": {str(t): generator.generate(args.prime, args.length, t, seed=args.seed)
                          for t in args.temperatures}}
    (work / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    print(f"\n{args.config.name}: dev {report['dev_bpc']:.3f} bits/char; unigram "
          f"{report['unigram_bpc']:.3f}, bigram {report['bigram_bpc']:.3f} "
          f"(ln 2 x bits = nats: {report['dev_bpc'] * math.log(2):.3f})")
    for t, text in report["samples"].items():
        print(f"\nT = {t}:\n```\n{text}\n```")
    print(f"\n{time.monotonic() - start:.0f} s in all; report in {work / 'report.json'}")
    return report


if __name__ == "__main__":
    main()
