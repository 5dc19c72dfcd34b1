"""``python -m bgekit <command> ...``: the ``bgekit`` command as a module, for launchers that
start one Python module per process (``torchrun -m bgekit train ...``, ``accelerate launch
-m bgekit train ...``)."""

from bgekit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
