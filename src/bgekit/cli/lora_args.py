"""The LoRA options of ``bgekit train`` (``--lora``, ``--lora-r`` ...), shared by the
commands that train adapters."""

from __future__ import annotations

import argparse
from typing import Any

from bgekit.errors import InputError

_TUNING = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")


def add_lora_args(
    p: argparse.ArgumentParser, *, targets_help: str = "q/k/v/o/gate/up/down projections"
) -> None:
    g = p.add_argument_group("LoRA (peft; the base stays frozen, the adapter is saved)")
    g.add_argument("--lora", action="store_true", help="train LoRA pairs instead of every weight")
    g.add_argument("--lora-r", type=int, default=None, help="rank (default 64)")
    g.add_argument("--lora-alpha", type=float, default=None, help="scale numerator: alpha / r (default 16)")
    g.add_argument("--lora-dropout", type=float, default=None, help="dropout on the LoRA input (default 0.1)")
    g.add_argument(
        "--lora-targets", default=None, help=f"comma-separated linear layer names (default: {targets_help})"
    )
    g.add_argument("--merge", action="store_true", help="also save the merged model under OUTPUT/merged")


def lora_from_args(ns: argparse.Namespace, **defaults: Any) -> Any:
    """The run's :class:`~bgekit.train.lora.LoraSettings` (``None`` without ``--lora``);
    a LoRA option without ``--lora`` is an error naming it. ``defaults``: the command's own
    defaults for fields the user did not set."""
    given = [name for name in _TUNING if getattr(ns, name) is not None] + (["merge"] if ns.merge else [])
    if not ns.lora:
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} applies to LoRA training; add --lora")
        return None
    from bgekit.train.lora import LoraSettings

    values = dict(defaults)
    for field, name in (("r", "lora_r"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout")):
        if getattr(ns, name) is not None:
            values[field] = getattr(ns, name)
    if ns.lora_targets is not None:
        values["target_modules"] = tuple(t.strip() for t in ns.lora_targets.split(",") if t.strip())
    return LoraSettings(**values, merge=ns.merge)
