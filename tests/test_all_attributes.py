"""``aflow.__all__`` lists exactly the public names the package re-exports."""

from __future__ import annotations

import aflow


def test_all_names_exist() -> None:
    missing = [name for name in aflow.__all__ if not hasattr(aflow, name)]
    assert missing == []


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(aflow).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("aflow")
    }
    assert public - set(aflow.__all__) == set()


def test_all_is_sorted_without_duplicates() -> None:
    assert len(aflow.__all__) == len(set(aflow.__all__))
