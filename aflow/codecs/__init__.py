"""Codecs: bytes to NumPy arrays and back, usable without a flow.

A decoder takes a *block* of whole lines (``bytes``, or the ``uint8`` array of a line
block) and returns :class:`Decoded` ``(rows, bad)``: the good lines' rows as one
structured array, and each bad line with its index in the block and its error. A block
is parsed in one call; when that fails it is halved until the bad lines are found, so one
bad line never costs its neighbours. Decoders never raise on bad input.

>>> import numpy as np
>>> from aflow.codecs import CsvDecoder, CsvEncoder
>>> rows = np.array([(1, 0.5), (2, 1.25)], [("ts", "i8"), ("value", "f4")])
>>> text = CsvEncoder().encode(rows)
>>> text
b'1,0.5\\n2,1.25\\n'
>>> decoded = CsvDecoder(rows.dtype).decode(text + b"3,oops\\n")
>>> np.array_equal(decoded.rows, rows), decoded.bad[0].index
(True, 2)

Encoders (:class:`CsvEncoder`, :class:`JsonlEncoder`) write one set of rules for every
sink that writes text: the file sinks and the socket sinks give the same bytes for the
same batch. The splitter and framers cut a byte stream into blocks of lines, records or
frames, keeping what an unfinished one holds until the next bytes come.

The flow stages that wrap the decoders (error policies, worker threads, header lines)
are :func:`aflow.decode_csv`, :func:`aflow.decode_jsonl` and :func:`aflow.decode_log`.
"""

from ._blocks import SMALL_BLOCK as SMALL_BLOCK
from ._blocks import BadLine as BadLine
from ._blocks import Block as Block
from ._blocks import Decoded as Decoded
from ._text import columns as columns
from .csv import CsvDecoder as CsvDecoder
from .csv import CsvEncoder as CsvEncoder
from .csv import Fmt as Fmt
from .framing import LengthPrefixedFramer as LengthPrefixedFramer
from .framing import RecordFramer as RecordFramer
from .jsonl import JsonlDecoder as JsonlDecoder
from .jsonl import JsonlEncoder as JsonlEncoder
from .lines import LineSplitter as LineSplitter
from .logs import COMBINED as COMBINED
from .logs import COMBINED_COLUMNS as COMBINED_COLUMNS
from .logs import LogDecoder as LogDecoder
from .logs import LogEngine as LogEngine
from .logs import LogFormat as LogFormat

__all__ = [
    "COMBINED",
    "COMBINED_COLUMNS",
    "SMALL_BLOCK",
    "BadLine",
    "Block",
    "CsvDecoder",
    "CsvEncoder",
    "Decoded",
    "Fmt",
    "JsonlDecoder",
    "JsonlEncoder",
    "LengthPrefixedFramer",
    "LineSplitter",
    "LogDecoder",
    "LogEngine",
    "LogFormat",
    "RecordFramer",
    "columns",
]
