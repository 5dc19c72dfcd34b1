"""``python -m bgekit.train embedder|reranker ...``: the ``bgekit train`` commands as a module,
for launchers that start one Python module per process (``torchrun``, ``accelerate launch``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bgekit.cli.train_cmd import register_train
from bgekit.errors import BgekitError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bgekit.train", description="fine-tune an embedder or a reranker"
    )
    register_train(parser.add_subparsers(dest="what", required=True))
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns))
    except BgekitError as e:
        print(f"bgekit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
