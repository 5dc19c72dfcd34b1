"""What the CPU this process runs on can do fast, read at run time.

The machines bgekit runs on change (an AMD EPYC with AVX-512 one day, an Intel Xeon with
AMX the next), so the fast paths are chosen from the CPU's own flags, never assumed.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# Flags bgekit looks at, by their /proc/cpuinfo names.
WATCHED = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and the matrix-instruction flags bgekit can use.

    >>> amx = CpuFeatures("Xeon", frozenset({"avx512f", "amx_tile", "amx_bf16", "amx_int8", "avx512_vnni"}))
    >>> amx.bf16, amx.int8
    ('AMX-BF16', 'AMX-INT8')
    >>> CpuFeatures("EPYC", frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})).bf16
    'AVX512-BF16'
    >>> CpuFeatures("old", frozenset({"avx2"})).bf16 is None
    True
    """

    model: str
    flags: frozenset[str]

    @property
    def bf16(self) -> str | None:
        """The bf16 matrix instructions the CPU has (best first), or ``None``."""
        if {"amx_tile", "amx_bf16"} <= self.flags:
            return "AMX-BF16"
        if "avx512_bf16" in self.flags:
            return "AVX512-BF16"
        return None

    @property
    def int8(self) -> str | None:
        """The int8 dot-product instructions the CPU has (best first), or ``None``."""
        if {"amx_tile", "amx_int8"} <= self.flags:
            return "AMX-INT8"
        if "avx512_vnni" in self.flags:
            return "AVX512-VNNI"
        if "avx_vnni" in self.flags:
            return "AVX-VNNI"
        return None

    def describe(self) -> str:
        """One line: model and the watched flags it has."""
        have = [f for f in WATCHED if f in self.flags]
        return f"{self.model} ({', '.join(have) or 'none of ' + ', '.join(WATCHED)})"


def _proc_cpuinfo() -> tuple[str, set[str]] | None:
    path = Path("/proc/cpuinfo")
    try:
        text = path.read_text()
    except OSError:
        return None
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return (model, flags) if flags else None


def _torch_says() -> dict[str, bool]:
    """What torch's own CPU checks report (they also see what the OS enabled, e.g. AMX tiles)."""
    checks = {
        "avx512_bf16": "_is_avx512_bf16_supported",
        "avx512_vnni": "_is_vnni_supported",
        "amx_tile": "_is_amx_tile_supported",
        "avx2": "_is_avx2_supported",
        "avx512f": "_is_avx512_supported",
    }
    out = {}
    for flag, name in checks.items():
        fn = getattr(torch.cpu, name, None)
        if fn is not None:
            try:
                out[flag] = bool(fn())
            except RuntimeError:
                continue
    return out


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's CPU: /proc/cpuinfo where there is one, confirmed by torch's checks
    (a flag torch reports as unusable is dropped; AMX needs the OS to enable tiles)."""
    read = _proc_cpuinfo()
    torch_flags = _torch_says()
    if read is None:
        model = platform.processor() or platform.machine()
        flags = {f for f, ok in torch_flags.items() if ok}
        if flags.intersection({"amx_tile"}):
            flags.update({"amx_bf16", "amx_int8"})
    else:
        model, flags = read
        flags = {f for f in flags if f in WATCHED}
        for flag, ok in torch_flags.items():
            if not ok:
                flags.discard(flag)
        if "amx_tile" not in flags:
            flags -= {"amx_bf16", "amx_int8"}
    return CpuFeatures(model or "unknown CPU", frozenset(flags))
