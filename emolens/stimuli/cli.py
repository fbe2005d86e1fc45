"""``emolens corpus``: statistics of the bundled corpus or of your own corpus files.

    emolens corpus stats                       # the bundled default corpus
    emolens corpus stats --name default
    emolens corpus stats --path my_corpus/     # a folder (forbidden/ inside is used) or .jsonl files
    emolens corpus stats --path a.jsonl b.jsonl --forbidden forbidden/ --markdown

Loading validates every record, so ``stats`` also checks a corpus: a problem is reported with
its file, line and field and the command exits with status 2.
"""
from __future__ import annotations

import argparse

import pandas as pd

from emolens.stimuli.corpus import Corpus, load_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``corpus`` actions on ``parser``."""
    parser.set_defaults(_corpus_parser=parser)
    sub = parser.add_subparsers(dest="corpus_action", metavar="ACTION")
    p = sub.add_parser("stats", help="per-emotion table and summary (validates the corpus)",
                       description="Print per-emotion statistics and a summary of a corpus.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--name", default=None, help="a bundled corpus (default: 'default')")
    src.add_argument("--path", nargs="+", default=None, metavar="PATH",
                     help="your own corpus: .jsonl files or folders")
    p.add_argument("--forbidden", default=None, metavar="PATH",
                   help="forbidden words: a JSON file or a folder of <emotion>.json files")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    g = sub.add_parser("grow", help="generate stories with model authors, keep the recognisable",
                       description="Generate stories with one or more author models "
                                   "(resumable), filter them, and keep those a judge model "
                                   "recognises (emolens.stimuli.grow).")
    g.add_argument("--authors", nargs="+", required=True, help="catalogue names of the authors")
    g.add_argument("--judge", required=True, help="catalogue name of the judge (not an author)")
    g.add_argument("--emotions", default=None, help="comma-separated (default: every emotion)")
    g.add_argument("--topics", type=int, default=24,
                   help="the first N topics of the bundled corpus (default 24: all)")
    g.add_argument("--per-topic", type=int, default=1, help="stories per (emotion, topic)")
    g.add_argument("--k", type=int, default=5, help="keep a story if its emotion ranks in the "
                                                    "judge's top k (default 5)")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--no-progress", action="store_true")


def _load(args: argparse.Namespace) -> Corpus:
    if getattr(args, "path", None):
        return Corpus.from_jsonl(args.path, forbidden=args.forbidden)
    corpus = load_corpus(args.name or "default")
    return corpus


def main(args: argparse.Namespace) -> int:
    """Run the chosen ``corpus`` action; returns the exit status."""
    action = getattr(args, "corpus_action", None)
    if action is None:
        parser = getattr(args, "_corpus_parser", None)
        if parser is not None:
            parser.print_help()
        return 0
    if action == "stats":
        corpus = _load(args)
        if args.markdown:
            from emolens.stimuli.readme import stats_markdown

            print(stats_markdown(corpus))
            return 0
        print(repr(corpus))
        with pd.option_context("display.max_rows", None, "display.width", 120,
                               "display.float_format", "{:.2f}".format):
            print(corpus.stats().to_string())
        print()
        for key, value in corpus.summary().items():
            print(f"{key:<14} {value}")
        return 0
    if action == "grow":
        import json

        from emolens.stimuli.grow import grow_corpus

        corpus = load_corpus()
        emotions = [e.strip() for e in args.emotions.split(",")] if args.emotions \
            else list(corpus.emotions)
        topics = sorted({r.topic for r in corpus.stories() if r.topic})[:args.topics]
        summary = grow_corpus(args.authors, args.judge, emotions, topics, args.per_topic,
                              args.out, k=args.k, batch_size=args.batch_size,
                              progress=not args.no_progress)
        print(json.dumps(summary, indent=2))
        return 0
    raise SystemExit(f"unknown corpus action {action!r}")
