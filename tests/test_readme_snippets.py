"""The README's marked snippets run as written (packaged model, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"<!-- readme-snippet -->\n```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(code: str, minilm: Path) -> None:
    exec(compile(code, str(README), "exec"), {})
