from __future__ import annotations

import bgekit


def test_all_names_exist_and_are_sorted_uniquely() -> None:
    assert len(set(bgekit.__all__)) == len(bgekit.__all__)
    for name in bgekit.__all__:
        assert hasattr(bgekit, name), name


def test_public_objects_are_exported() -> None:
    public = {
        n for n in dir(bgekit) if not n.startswith("_") and not isinstance(getattr(bgekit, n), type(bgekit))
    }
    assert public == set(bgekit.__all__) - {"__version__"}
