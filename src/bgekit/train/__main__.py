"""``python -m bgekit.train embedder|reranker ...``: the ``bgekit train`` commands as a module,
for launchers that start one Python module per process (``torchrun``, ``accelerate launch``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bgekit.cli.common import run_parser
from bgekit.cli.train_cmd import register_train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bgekit.train", description="fine-tune an embedder or a reranker"
    )
    register_train(parser.add_subparsers(dest="what", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parser(build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
