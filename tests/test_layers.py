"""No import runs upward in bgekit's layers.

Every module under ``src/bgekit`` is parsed with ``ast`` (nothing is imported) and each of
its imports of bgekit — at the top, inside functions, under ``TYPE_CHECKING``, relative, and
the run-time ``importlib.import_module`` / ``__import__`` / ``runpy.run_module`` of a
constant name — must reach its own layer or one below. The order, lowest first (worked out
from the imports as they are; a module may import only from its own row and the rows above):

 0. ``errors``, ``types``            what everything shares; import nothing of bgekit
 1. ``inputs``, ``io``, ``images``   input checks, files, image inputs (use errors / types)
 2. ``engine``                       batching, devices, precision
 3. ``scoring``                      pure numpy scoring and dense quantisation
 4. ``models``                       loading, tokenizers, backbones, Embedder, Reranker
 5. ``retrieval``                    the search core, DenseStore, BM25, Pipeline
 6. ``index``                        documents, the embedded index (searches via retrieval)
 7. ``bgekit`` (``__init__``)        the public facade: re-exports rows 0-6
 8. ``eval``                         evaluation runs
 9. ``train``                        fine-tuning (its data reads eval's BEIR loader)
10. ``distributed``                  Ray encoding, shards, bulk loads
11. ``integrations``                 LangChain / LlamaIndex / Haystack components
12. ``server``                       the HTTP server
13. ``cli``                          the ``bgekit`` command
14. ``bgekit.__main__``              ``python -m bgekit``

``TYPE_CHECKING`` imports count too: none runs upward, and a type-only upward reference is a
layering problem all the same. A deliberate exception goes in :data:`ALLOWED` with its
reason; today there is one, the deprecated ``python -m bgekit.train`` alias, which runs
``python -m bgekit`` (row 14) at run time instead of importing the command line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[set[str]] = [
    {"errors", "types"},
    {"inputs", "io", "images"},
    {"engine"},
    {"scoring"},
    {"models"},
    {"retrieval"},
    {"index"},
    {""},  # the package itself: bgekit/__init__.py
    {"eval"},
    {"train"},
    {"distributed"},
    {"integrations"},
    {"server"},
    {"cli"},
    {"__main__"},
]

# (importing module, imported module) -> why it may run upward
ALLOWED: dict[tuple[str, str], str] = {
    ("bgekit.train.__main__", "bgekit.__main__"): (
        "the deprecated `python -m bgekit.train` alias runs `python -m bgekit train` via runpy"
    ),
}

# run-time imports of a module named by a string constant (their first argument)
_DYNAMIC = {
    ("importlib", "import_module"),
    ("", "import_module"),
    ("", "__import__"),
    ("runpy", "run_module"),
    ("", "run_module"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module (or the package a name is taken from), dotted
    where: str  # file:line


def layer_of(module: str) -> int:
    """The row of ``bgekit.<part>...``: its first part below ``bgekit`` ("" for the package)."""
    parts = module.split(".")
    assert parts[0] == "bgekit", module
    top = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add bgekit.{top} to LAYERS in tests/test_layers.py")


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str, src: Path) -> bool:
    base = src.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _dynamic_target(call: ast.Call, src: Path) -> str | None:
    """The module a run-time import call names, when it is a string constant."""
    f = call.func
    owner, name = (
        (f.value.id, f.attr)
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
        else ("", f.id)
        if isinstance(f, ast.Name)
        else ("", "")
    )
    if (owner, name) not in _DYNAMIC or not call.args:
        return None
    arg = call.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return None
    target = arg.value
    if name == "run_module" and (src.joinpath(*target.split(".")) / "__main__.py").is_file():
        target += ".__main__"  # running a package runs its __main__
    return target


def imports_of(path: Path, src: Path) -> list[Import]:
    """Every bgekit import in one file, wherever in the file it is."""
    module = _module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level - 1 packages
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from bgekit import cli`` imports the subpackage, not the facade
            subs = [f"{source}.{a.name}" for a in node.names if _is_module(f"{source}.{a.name}", src)]
            targets = subs if subs and len(subs) == len(node.names) else [source, *subs]
        elif isinstance(node, ast.Call):
            dynamic = _dynamic_target(node, src)
            targets = [dynamic] if dynamic else []
        where = f"{src.name}/{path.relative_to(src)}:{getattr(node, 'lineno', 0)}"
        out += [Import(module, t, where) for t in targets if t == "bgekit" or t.startswith("bgekit.")]
    return out


def upward_imports(src: Path) -> list[str]:
    """Each import that reaches a higher layer than its module's, as one line."""
    bad = []
    for path in sorted((src / "bgekit").rglob("*.py")):
        mine = layer_of(_module_name(path, src))  # every module has a layer, importing or not
        for imp in imports_of(path, src):
            theirs = layer_of(imp.target)
            if theirs > mine and (imp.module, imp.target) not in ALLOWED:
                bad.append(
                    f"{imp.module} ({imp.where}) imports {imp.target}: "
                    f"layer {mine} {sorted(LAYERS[mine])} -> layer {theirs} {sorted(LAYERS[theirs])}"
                )
    return bad


def test_no_import_runs_upward() -> None:
    bad = upward_imports(SRC)
    assert not bad, "upward imports (see the layer order in tests/test_layers.py):\n" + "\n".join(bad)


def test_every_allowed_exception_is_still_there() -> None:
    """An exception that is no longer needed comes out of :data:`ALLOWED`."""
    found = {
        (imp.module, imp.target) for path in (SRC / "bgekit").rglob("*.py") for imp in imports_of(path, SRC)
    }
    assert set(ALLOWED) <= found, set(ALLOWED) - found


def _write(src: Path, name: str, text: str) -> None:
    path = src / "bgekit" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_names_each_kind_of_upward_import(tmp_path: Path) -> None:
    """A small tree with one upward import of each kind: each is reported with the module,
    file and line, and the import; downward and same-layer ones are not."""
    tmp_path = tmp_path / "src"
    for pkg in ("", "engine/", "models/", "cli/", "server/"):
        _write(tmp_path, f"{pkg}__init__.py", "")
    _write(tmp_path, "errors.py", "")
    _write(tmp_path, "engine/run.py", "from bgekit.errors import X\nfrom bgekit.engine import y\n")
    _write(tmp_path, "engine/late.py", "def f():\n    from bgekit.models import Embedder\n")
    _write(tmp_path, "engine/types_only.py", "if TYPE_CHECKING:\n    from bgekit.cli.main import main\n")
    _write(tmp_path, "models/rel.py", "from ..server import app\nfrom . import run\n")
    _write(tmp_path, "models/dyn.py", "import importlib\nimportlib.import_module('bgekit.cli')\n")
    _write(tmp_path, "models/sub.py", "from bgekit import cli\nimport bgekit.engine.run\n")
    got = upward_imports(tmp_path)
    assert got == [
        "bgekit.engine.late (src/bgekit/engine/late.py:2) imports bgekit.models: "
        "layer 2 ['engine'] -> layer 4 ['models']",
        "bgekit.engine.types_only (src/bgekit/engine/types_only.py:2) imports bgekit.cli.main: "
        "layer 2 ['engine'] -> layer 13 ['cli']",
        "bgekit.models.dyn (src/bgekit/models/dyn.py:2) imports bgekit.cli: layer 4 ['models'] -> layer 13 ['cli']",
        "bgekit.models.rel (src/bgekit/models/rel.py:1) imports bgekit.server: "
        "layer 4 ['models'] -> layer 12 ['server']",
        "bgekit.models.sub (src/bgekit/models/sub.py:1) imports bgekit.cli: layer 4 ['models'] -> layer 13 ['cli']",
    ]
    _write(tmp_path, "newpkg/__init__.py", "")
    with pytest.raises(AssertionError, match=r"bgekit\.newpkg is in no layer"):
        upward_imports(tmp_path)
