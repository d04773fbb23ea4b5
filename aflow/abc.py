"""The public extension API: write your own sources, stateful stages and sinks.

Every built-in source, stage and sink of aflow is written on this module alone, so what
you write here runs exactly like they do (fusion, backpressure, statistics, graceful stop).
See the docs page "Writing your own source, stage and sink" for complete examples, and
:func:`aflow.testing.check_sink` / :func:`aflow.testing.check_source` to test yours.

* A **source** subclasses :class:`Source` and implements ``produce(out, ctx)``: emit
  :data:`Message` s (a ``list`` chunk of elements, or one :class:`Batch`) with
  ``await out.emit(msg)``; ``aflow.Flow(MySource())`` makes it a flow.
* A **stateful stage** subclasses :class:`Operator` (``start()`` returns a fresh
  :class:`Processor` per run: ``process(msg)`` per message, ``flush()`` at end of input)
  or, when it must await, :class:`AsyncOperator`; ``aflow.Stage(MyOperator())`` makes it a
  stage.
* A **sink** subclasses :class:`SinkOperator` (``writer(ctx)`` returns a fresh
  :class:`SinkWriter`: open, write, flush, close, result); ``aflow.Sink(MySinkOp())``.
* :class:`Context` is what a run offers them (sub-flows, tasks, buffers); most never need
  it.
"""

from ._core.buffers import Buffer as Buffer
from ._core.messages import Barrier as Barrier
from ._core.messages import Batch as Batch
from ._core.messages import BatchReason as BatchReason
from ._core.messages import Message as Message
from ._core.messages import Provenance as Provenance
from ._core.operators import AsyncOperator as AsyncOperator
from ._core.operators import Closed as Closed
from ._core.operators import Context as Context
from ._core.operators import Inbox as Inbox
from ._core.operators import Op as Op
from ._core.operators import Operator as Operator
from ._core.operators import Outlet as Outlet
from ._core.operators import Processor as Processor
from ._core.operators import SinkOperator as SinkOperator
from ._core.operators import SinkWriter as SinkWriter
from ._core.operators import Source as Source
from ._core.operators import async_kind as async_kind
from ._core.operators import callable_name as callable_name
from ._core.operators import chain_buffers as chain_buffers
from ._core.operators import is_async_callable as is_async_callable
from ._core.operators import refuse_async as refuse_async
from ._core.segments import locate as locate
from .policies import ErrorPolicy as ErrorPolicy
from .policies import apply_policy as apply_policy
from .policies import check_policy as check_policy
from .stats import StageCounters as StageCounters

__all__ = [
    "AsyncOperator",
    "Barrier",
    "Batch",
    "BatchReason",
    "Buffer",
    "Closed",
    "Context",
    "ErrorPolicy",
    "Inbox",
    "Message",
    "Op",
    "Operator",
    "Outlet",
    "Processor",
    "Provenance",
    "SinkOperator",
    "SinkWriter",
    "Source",
    "StageCounters",
    "apply_policy",
    "async_kind",
    "callable_name",
    "chain_buffers",
    "check_policy",
    "is_async_callable",
    "locate",
    "refuse_async",
]
