"""Deprecated: ``python -m bgekit.train embedder|reranker ...`` is now ``python -m bgekit
train embedder|reranker ...`` (``torchrun -m bgekit train ...``). This alias says so in one
line on stderr and runs that command.

It reaches the command line at run time, through the package's own entry point
(``runpy`` runs ``bgekit.__main__`` as ``python -m bgekit`` would), so that the training
layer never imports ``bgekit.cli``, which sits above it (tests/test_layers.py)."""

from __future__ import annotations

import os
import runpy
import sys

DEPRECATED = "bgekit: python -m bgekit.train is deprecated; use python -m bgekit train ..."


def main() -> None:
    # torchrun starts one process per device with RANK set: the first says it, not every one
    if os.environ.get("RANK", "0") == "0":
        print(DEPRECATED, file=sys.stderr)
    sys.argv[1:1] = ["train"]
    runpy.run_module("bgekit", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
