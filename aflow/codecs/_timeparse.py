"""Fixed-width timestamps parsed with array arithmetic instead of ``strptime`` per text.

Log timestamps are written with fixed-width fields (``10/Oct/2000:13:55:36 -0700``,
``2000-10-10 13:55:36``). For a format made only of ``%Y %m %d %H %M %S %b %z`` and
literal characters, every field sits at a known position: the texts become one array of
code points, the fields are read column-wise, checked (digits, ranges, the day against
its month, the literal characters) and combined into nanoseconds since the epoch, UTC.
A text that fails a check (another width, an impossible date) is left to ``strptime``
by the caller, so the result is always the same as parsing each text with it.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

__all__ = ["FixedFormat"]

_WIDTH = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2, "b": 3, "z": 5}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_MONTH_KEYS = np.array([(ord(m[0]) << 16) | (ord(m[1]) << 8) | ord(m[2]) for m in _MONTHS])
_MONTH_ORDER = np.argsort(_MONTH_KEYS)


class FixedFormat:
    """A ``strftime`` format whose fields all have a fixed width.

    Raises:
        ValueError: the format has a directive of variable width (``%B``, ``%f``, ...),
            a field twice, or no date.
    """

    def __init__(self, fmt: str) -> None:
        self.fields: dict[str, int] = {}  # directive -> position
        self.literals: list[tuple[int, int]] = []  # (position, code point)
        pos = 0
        for directive, literal in re.findall(r"%(.)|([^%])", fmt):
            if literal:
                self.literals.append((pos, ord(literal)))
                pos += 1
            elif directive == "%":
                self.literals.append((pos, ord("%")))
                pos += 1
            elif directive in _WIDTH and directive not in self.fields:
                self.fields[directive] = pos
                pos += _WIDTH[directive]
            else:
                raise ValueError(f"%{directive} has no fixed width here")
        if not {"Y", "d"} <= self.fields.keys() or not {"m", "b"} & self.fields.keys():
            raise ValueError("the format has no full date")
        self.width = pos

    def parse(self, texts: list[str]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Nanoseconds since the epoch (UTC) of each text, and which texts parsed."""
        n = len(texts)
        ok = np.fromiter(map(len, texts), np.int64, n) == self.width
        codes = np.array(texts, dtype=f"<U{self.width}")  # longer texts cut: not ok anyway
        c = codes.view(np.uint32).reshape(n, self.width).astype(np.int64)
        for pos, point in self.literals:
            ok &= c[:, pos] == point

        def number(field: str) -> NDArray[np.int64]:
            nonlocal ok
            start = self.fields[field]
            digits = c[:, start : start + _WIDTH[field]] - 48
            ok &= ((digits >= 0) & (digits <= 9)).all(axis=1)
            value = np.zeros(n, np.int64)
            for k in range(digits.shape[1]):
                value = value * 10 + digits[:, k]
            return value

        year = number("Y")
        day = number("d")
        if "m" in self.fields:
            month = number("m")
        else:
            at = self.fields["b"]
            ok &= (c[:, at : at + 3] < 128).all(axis=1)  # ASCII letters only
            lower = c[:, at : at + 3] | 0x20  # %b ignores case
            key = (lower[:, 0] << 16) | (lower[:, 1] << 8) | lower[:, 2]
            found = _MONTH_ORDER[np.searchsorted(_MONTH_KEYS[_MONTH_ORDER], key).clip(0, 11)]
            ok &= _MONTH_KEYS[found] == key
            month = found + 1
        hour = number("H") if "H" in self.fields else np.zeros(n, np.int64)
        minute = number("M") if "M" in self.fields else np.zeros(n, np.int64)
        second = number("S") if "S" in self.fields else np.zeros(n, np.int64)
        offset = np.zeros(n, np.int64)
        if "z" in self.fields:
            at = self.fields["z"]
            sign = c[:, at]
            ok &= (sign == ord("+")) | (sign == ord("-"))
            hhmm = c[:, at + 1 : at + 5] - 48
            ok &= ((hhmm >= 0) & (hhmm <= 9)).all(axis=1)
            zh, zm = hhmm[:, 0] * 10 + hhmm[:, 1], hhmm[:, 2] * 10 + hhmm[:, 3]
            ok &= (zh <= 23) & (zm <= 59)
            offset = np.where(sign == ord("-"), -1, 1) * (zh * 3600 + zm * 60)
        # datetime64[ns] spans 1677-09-21 to 2262-04-11: other years are left to strptime
        ok &= (year >= 1678) & (year <= 2261) & (month >= 1) & (month <= 12) & (day >= 1)
        ok &= day <= _days_in_month(year, month.clip(1, 12))
        ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
        days = _days_from_civil(year, month.clip(1, 12), day)
        seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
        return np.where(ok, seconds * 1_000_000_000, 0), ok


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
