"""Fixed-width timestamps parsed with array arithmetic instead of ``strptime`` per text.

Log timestamps are written with fixed-width fields (``10/Oct/2000:13:55:36 -0700``,
``2000-10-10 13:55:36.123456``). For a format made only of ``%Y %m %d %H %M %S %b %f %z``
and literal characters, every field sits at a known position: the texts become one array
of code points, the fields are read column-wise, checked (digits, ranges, the day against
its month, the literal characters) and combined into nanoseconds since the epoch, UTC.

Two directives have a few widths, as ``strptime`` reads them: ``%f`` takes 1 to 6 digits
(``,123`` of Python's logging, ``.123456`` of RFC 5424 syslog) and ``%z`` takes ``+HHMM``,
``+HH:MM`` or ``Z``. Each combination of widths is a *layout* of fixed positions; a text
is parsed with the layout of its length (trying them in turn when lengths coincide).
A text that fails every check (another width, an impossible date) is left to
``strptime`` by the caller, so the result is always the same as parsing each text with it.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
from numpy.typing import NDArray

__all__ = ["FixedFormat"]

_WIDTH = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2, "b": 3, "z": 5, "f": 6}
_WIDTHS = {"f": (6, 3, 1, 2, 4, 5), "z": (5, 6, 1)}  # the most common first
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_MONTH_KEYS = np.array([(ord(m[0]) << 16) | (ord(m[1]) << 8) | ord(m[2]) for m in _MONTHS])
_MONTH_ORDER = np.argsort(_MONTH_KEYS)

Codes = NDArray[np.int64]  # code points, shape (n, width)


class FixedFormat:
    """A ``strftime`` format whose fields all have a fixed width (or a few, see above).

    Raises:
        ValueError: the format has a directive of variable width (``%B``, ``%j``, ...),
            a field twice, or no date.
    """

    def __init__(self, fmt: str) -> None:
        tokens: list[tuple[str, str]] = re.findall(r"%(.)|([^%])", fmt)
        seen: set[str] = set()
        for directive, _ in tokens:
            if not directive or directive == "%":
                continue
            if directive not in _WIDTH or directive in seen:
                raise ValueError(f"%{directive} has no fixed width here")
            seen.add(directive)
        if not {"Y", "d"} <= seen or not {"m", "b"} & seen:
            raise ValueError("the format has no full date")
        choices = [_WIDTHS[d] if d in seen else (0,) for d in ("f", "z")]
        self.layouts = [_Layout(tokens, f, z) for f, z in itertools.product(*choices)]
        self.width = self.layouts[0].width  # of the usual widths

    def parse(self, texts: list[str]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Nanoseconds since the epoch (UTC) of each text, and which texts parsed."""
        n = len(texts)
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        lengths = np.fromiter(map(len, texts), np.int64, n)
        if len(self.layouts) == 1:
            return self.layouts[0].parse(texts, lengths == self.width)
        ns = np.zeros(n, np.int64)
        ok = np.zeros(n, bool)
        for layout in self.layouts:
            todo = ~ok & (lengths == layout.width)
            if not todo.any():
                continue
            if todo.all():
                return layout.parse(texts, todo)
            idx = np.flatnonzero(todo)
            sub_ns, sub_ok = layout.parse([texts[i] for i in idx.tolist()], todo[idx])
            ns[idx[sub_ok]] = sub_ns[sub_ok]
            ok[idx[sub_ok]] = True
        return ns, ok

    def parse_codes(self, c: Codes) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """:meth:`parse` of texts of one width given as code points, shape
        ``(n, width)``: the layout of that width only."""
        layout = next(x for x in self.layouts if x.width == c.shape[1])
        return layout.parse_codes(c, np.ones(len(c), bool))


class _Layout:
    """The positions of the fields for one width of ``%f`` and of ``%z`` (0: absent)."""

    def __init__(self, tokens: list[tuple[str, str]], f_width: int, z_width: int) -> None:
        self.fields: dict[str, tuple[int, int]] = {}  # directive -> (position, width)
        self.literals: list[tuple[int, int]] = []  # (position, code point)
        pos = 0
        for directive, literal in tokens:
            if literal or directive == "%":
                self.literals.append((pos, ord(literal or "%")))
                pos += 1
                continue
            width = {"f": f_width, "z": z_width}.get(directive, _WIDTH[directive])
            self.fields[directive] = (pos, width)
            pos += width
        self.width = pos

    def parse(
        self, texts: list[str], ok: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Nanoseconds and which parsed; ``ok`` (shape (n,)): the texts of this width."""
        n = len(texts)
        codes = np.array(texts, dtype=f"<U{max(self.width, 1)}")  # longer texts cut: not ok
        c = codes.view(np.uint32).reshape(n, -1)[:, : self.width].astype(np.int64)
        if c.shape[1] < self.width:  # every text shorter than the layout
            return np.zeros(n, np.int64), np.zeros(n, bool)
        return self.parse_codes(c, ok)

    def parse_codes(
        self, c: Codes, ok: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """:meth:`parse` of texts given as code points, shape ``(n, width)``."""
        n = len(c)
        for pos, point in self.literals:
            ok &= c[:, pos] == point
        fields = self.fields

        def number(field: str) -> NDArray[np.int64]:
            nonlocal ok
            if field not in fields:
                return np.zeros(n, np.int64)
            value, good = _digits(c, *fields[field])
            ok &= good
            return value

        year, day = number("Y"), number("d")
        if "m" in fields:
            month = number("m")
        else:
            month, good = _month(c, fields["b"][0])
            ok &= good
        hour, minute, second = number("H"), number("M"), number("S")
        fraction = number("f") * 10 ** (9 - fields["f"][1]) if "f" in fields else 0
        offset = np.zeros(n, np.int64)
        if "z" in fields:
            offset, good = _offset(c, *fields["z"])
            ok &= good
        # datetime64[ns] spans 1677-09-21 to 2262-04-11: other years are left to strptime
        ok &= (year >= 1678) & (year <= 2261) & (month >= 1) & (month <= 12) & (day >= 1)
        ok &= day <= _days_in_month(year, month.clip(1, 12))
        ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
        days = _days_from_civil(year, month.clip(1, 12), day)
        seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
        return np.where(ok, seconds * 1_000_000_000 + fraction, 0), ok


def _digits(c: Codes, start: int, width: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """The decimal number at columns ``start:start + width`` and where it is all digits."""
    digits = c[:, start : start + width] - 48
    value = np.zeros(len(c), np.int64)
    for k in range(width):
        value = value * 10 + digits[:, k]
    return value, np.asarray(((digits >= 0) & (digits <= 9)).all(axis=1), np.bool_)


def _month(c: Codes, at: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """``%b``: the month (1-12) of an English abbreviation, any case."""
    ok = (c[:, at : at + 3] < 128).all(axis=1)  # ASCII letters only
    lower = c[:, at : at + 3] | 0x20
    key = (lower[:, 0] << 16) | (lower[:, 1] << 8) | lower[:, 2]
    found = _MONTH_ORDER[np.searchsorted(_MONTH_KEYS[_MONTH_ORDER], key).clip(0, 11)]
    return found + 1, ok & (_MONTH_KEYS[found] == key)


def _offset(c: Codes, at: int, width: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """``%z`` in seconds east of UTC: ``+HHMM`` (width 5), ``+HH:MM`` (6) or ``Z`` (1)."""
    if width == 1:
        return np.zeros(len(c), np.int64), c[:, at] == ord("Z")
    sign = c[:, at]
    ok = (sign == ord("+")) | (sign == ord("-"))
    zh, good_h = _digits(c, at + 1, 2)
    if width == 6:
        ok &= c[:, at + 3] == ord(":")
    zm, good_m = _digits(c, at + width - 2, 2)
    ok &= good_h & good_m & (zh <= 23) & (zm <= 59)
    return np.where(sign == ord("-"), -1, 1) * (zh * 3600 + zm * 60), ok


def _days_in_month(year: NDArray[np.int64], month: NDArray[np.int64]) -> NDArray[np.int64]:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    base = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[month]
    return np.asarray(base + (leap & (month == 2)), np.int64)


def _days_from_civil(
    year: NDArray[np.int64], month: NDArray[np.int64], day: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return np.asarray(era * 146097 + doe - 719468, np.int64)
