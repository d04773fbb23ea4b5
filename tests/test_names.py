"""One name, one meaning: the signatures of aflow's public functions (those ``aflow`` and
``aflow.connectors`` export) against the table "Argument names and their meaning" of
``docs/api.md``.

A name used by two or more public functions must be in the table; every use of a name in
the table must carry one of its documented annotations (as written in the source); the
retired names listed under the table must appear nowhere, as a parameter or a function.
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aflow as af
import aflow.connectors

API_DOC = Path(__file__).parent.parent / "docs" / "api.md"
SECTION = "## Argument names and their meaning"


def section() -> str:
    text = API_DOC.read_text()
    start = text.index(SECTION) + len(SECTION)
    end = text.index("\n## ", start)
    return text[start:end]


def documented() -> dict[str, list[re.Pattern[str]]]:
    """Table rows: name -> the annotations it may have (``...`` matches anything)."""
    out: dict[str, list[re.Pattern[str]]] = {}
    for line in section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        types = [t.replace(" or ", " | ") for t in re.findall(r"`([^`]+)`", cells[2])]
        patterns = [re.compile(".*".join(map(re.escape, t.split("..."))) + r"\Z") for t in types]
        for name in names:
            assert name not in out, f"{name} is in the table twice"
            out[name] = patterns
    return out


def retired() -> list[str]:
    tail = section().split("Retired names", 1)[1]
    return re.findall(r"`([a-z_]+)`", tail.split(":", 1)[1])


def public_callables() -> list[tuple[str, Callable[..., Any]]]:
    fns: list[tuple[str, Callable[..., Any]]] = [
        (n, getattr(af, n)) for n in af.__all__ if inspect.isfunction(getattr(af, n))
    ]
    for cls in (af.Flow, af.SinkFlow):
        fns += [(f"{cls.__name__}.{m}", getattr(cls, m)) for m in ("open", "run")]
    return fns + connectors()


def connectors() -> list[tuple[str, Callable[..., Any]]]:
    """The functions ``aflow.connectors`` exports (each loads its module, which needs its
    optional extra: the ``test`` extra has them all)."""
    fns = []
    for n in aflow.connectors.__all__:
        try:
            fn = getattr(aflow.connectors, n)
        except ImportError as exc:
            pytest.skip(f"aflow.connectors.{n} needs an extra that is not installed: {exc}")
        if inspect.isfunction(fn):
            fns.append((f"connectors.{n}", fn))
    return fns


def uses() -> dict[str, list[tuple[str, str]]]:
    """Parameter name -> (function, annotation as written) for every public function."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    seen: set[int] = set()
    for fname, fn in public_callables():
        if id(fn) in seen:  # exported twice (aflow and aflow.connectors): one function
            continue
        seen.add(id(fn))
        for p in inspect.signature(fn).parameters.values():
            if p.name != "self":
                out[p.name].append((fname, str(p.annotation)))
    return out


def test_the_table_parses() -> None:
    table = documented()
    assert len(table) > 40
    assert {"on", "key", "framing", "buffer", "max_bytes_in_flight"} <= set(table)
    assert retired() == ["max_bytes", "encode", "by", "column", "chain", "tee"]


def test_the_connectors_are_checked() -> None:
    names = {f for f, _ in public_callables()}
    assert {"connectors.read_mqtt", "connectors.to_mqtt", "connectors.to_postgres"} <= names
    assert {f"connectors.{n}" for n in aflow.connectors.__all__} <= names


def test_every_recurring_name_is_documented() -> None:
    table = documented()
    missing = {
        name: [f for f, _ in where]
        for name, where in uses().items()
        if len(where) > 1 and name not in table
    }
    assert not missing, f"recurring argument names missing from docs/api.md: {missing}"


def test_every_use_of_a_documented_name_has_a_documented_type() -> None:
    table = documented()
    wrong = [
        f"{fname}({name}: {annotation})"
        for name, where in uses().items()
        if name in table
        for fname, annotation in where
        if not any(p.match(annotation) for p in table[name])
    ]
    assert not wrong, f"annotations not in docs/api.md's table: {wrong}"


def test_every_documented_name_is_used() -> None:
    used = uses()
    assert not [name for name in documented() if name not in used]


def test_retired_names_are_gone() -> None:
    used = uses()
    for name in retired():
        assert name not in used, f"retired argument {name!r} is back in {used[name]}"
        assert not hasattr(af, name), f"retired function aflow.{name} is back"


@pytest.mark.parametrize(
    "call",
    [
        lambda: af.window(10, by="ts"),
        lambda: af.to_tcp("localhost", 1, encode="lines"),
        lambda: af.batch(10, max_bytes=100),
    ],
)
def test_a_retired_keyword_fails_loudly(call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        call()
