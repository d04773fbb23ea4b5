"""aflow: async streaming pipelines that batch into NumPy arrays, with backpressure.

Re-exports only; see the modules for the code.
"""

from ._core.delivery import Checkpoint as Checkpoint
from ._core.delivery import CheckpointStore as CheckpointStore
from ._core.delivery import SqliteStore as SqliteStore
from ._core.messages import Barrier as Barrier
from ._core.messages import Batch as Batch
from ._core.messages import Provenance as Provenance
from ._core.run import OutputRun as OutputRun
from ._core.run import Run as Run
from ._core.run import RunResult as RunResult
from .codecs.images import ImageDecoder as ImageDecoder
from .connectors import read_nats as read_nats
from .connectors import read_redis as read_redis
from .connectors import to_nats as to_nats
from .connectors import to_redis as to_redis
from .errors import AflowError as AflowError
from .errors import AflowWarning as AflowWarning
from .errors import CheckpointInUse as CheckpointInUse
from .errors import CheckpointMismatch as CheckpointMismatch
from .errors import DataLossError as DataLossError
from .errors import DecodeError as DecodeError
from .errors import FlowDefinitionError as FlowDefinitionError
from .errors import FrameTooLongError as FrameTooLongError
from .errors import IncompleteFrameError as IncompleteFrameError
from .errors import LateDataError as LateDataError
from .errors import LineTooLongError as LineTooLongError
from .errors import NotResumableWarning as NotResumableWarning
from .errors import ReconnectError as ReconnectError
from .errors import RetriesExhaustedError as RetriesExhaustedError
from .errors import SourceReusedError as SourceReusedError
from .errors import StageTimeoutError as StageTimeoutError
from .flow import Collect as Collect
from .flow import CollectMode as CollectMode
from .flow import Flow as Flow
from .flow import Sink as Sink
from .flow import SinkFlow as SinkFlow
from .flow import Stage as Stage
from .flow import run as run
from .kernels.keyed import KeyedStats as KeyedStats
from .policies import FailedItem as FailedItem
from .policies import dead_letter as dead_letter
from .policies import retry as retry
from .sinks.aggregate import to_aggregate as to_aggregate
from .sinks.collect import collect as collect
from .sinks.collect import discard as discard
from .sinks.collect import for_each as for_each
from .sinks.collect import reduce as reduce
from .sinks.files import FileSummary as FileSummary
from .sinks.files import to_csv as to_csv
from .sinks.files import to_jsonl as to_jsonl
from .sinks.files import to_npy as to_npy
from .sinks.files import to_parquet as to_parquet
from .sinks.histogram import Histogram as Histogram
from .sinks.histogram import QuantileSketch as QuantileSketch
from .sinks.histogram import to_histogram as to_histogram
from .sinks.histogram import to_quantiles as to_quantiles
from .sinks.queues import to_queue as to_queue
from .sinks.routing import broadcast as broadcast
from .sinks.routing import partition as partition
from .sinks.sockets import to_tcp as to_tcp
from .sinks.sockets import to_udp as to_udp
from .sources.asof import asof_join as asof_join
from .sources.combine import concat as concat
from .sources.combine import merge as merge
from .sources.combine import repeat as repeat
from .sources.combine import zip as zip
from .sources.datasets import DatasetFiles as DatasetFiles
from .sources.datasets import DatasetProvenance as DatasetProvenance
from .sources.datasets import list_dataset as list_dataset
from .sources.datasets import read_dataset as read_dataset
from .sources.files import read_blocks as read_blocks
from .sources.files import read_bytes as read_bytes
from .sources.files import read_csv as read_csv
from .sources.files import read_jsonl as read_jsonl
from .sources.files import read_lines as read_lines
from .sources.files import read_log as read_log
from .sources.files import read_npy as read_npy
from .sources.files import read_records as read_records
from .sources.iterables import from_array as from_array
from .sources.iterables import from_arrays as from_arrays
from .sources.iterables import from_iterable as from_iterable
from .sources.sockets import ConnectionEvent as ConnectionEvent
from .sources.sockets import tcp_client as tcp_client
from .sources.sockets import tcp_server as tcp_server
from .sources.sockets import udp_server as udp_server
from .sources.sockets import unix_server as unix_server
from .stages.augment import add_noise as add_noise
from .stages.augment import normalize as normalize
from .stages.augment import random_crop as random_crop
from .stages.augment import random_flip as random_flip
from .stages.batch import filter_rows as filter_rows
from .stages.batch import map_batches as map_batches
from .stages.batching import batch as batch
from .stages.batching import rebatch as rebatch
from .stages.batching import unbatch as unbatch
from .stages.decode import decode_csv as decode_csv
from .stages.decode import decode_jsonl as decode_jsonl
from .stages.decode import decode_log as decode_log
from .stages.element import filter as filter
from .stages.element import flat_map as flat_map
from .stages.element import map as map
from .stages.element import scan as scan
from .stages.element import skip as skip
from .stages.element import take as take
from .stages.element import take_while as take_while
from .stages.loading import sample as sample
from .stages.loading import shuffle as shuffle
from .stages.sensors import reorder as reorder
from .stages.sensors import resample as resample
from .stages.time import buffer as buffer
from .stages.time import throttle as throttle
from .stages.time import timeout as timeout
from .stages.windows import window as window
from .stats import RunStatistics as RunStatistics
from .stats import StageStatistics as StageStatistics

__version__ = "0.1.0"

__all__ = [
    "AflowError",
    "AflowWarning",
    "Barrier",
    "Batch",
    "Checkpoint",
    "CheckpointInUse",
    "CheckpointMismatch",
    "CheckpointStore",
    "Collect",
    "CollectMode",
    "ConnectionEvent",
    "DataLossError",
    "DatasetFiles",
    "DatasetProvenance",
    "DecodeError",
    "FailedItem",
    "FileSummary",
    "Flow",
    "FlowDefinitionError",
    "FrameTooLongError",
    "Histogram",
    "ImageDecoder",
    "IncompleteFrameError",
    "KeyedStats",
    "LateDataError",
    "LineTooLongError",
    "NotResumableWarning",
    "OutputRun",
    "Provenance",
    "QuantileSketch",
    "ReconnectError",
    "RetriesExhaustedError",
    "Run",
    "RunResult",
    "RunStatistics",
    "Sink",
    "SinkFlow",
    "SourceReusedError",
    "SqliteStore",
    "Stage",
    "StageStatistics",
    "StageTimeoutError",
    "add_noise",
    "asof_join",
    "batch",
    "broadcast",
    "buffer",
    "collect",
    "concat",
    "dead_letter",
    "decode_csv",
    "decode_jsonl",
    "decode_log",
    "discard",
    "filter",
    "filter_rows",
    "flat_map",
    "for_each",
    "from_array",
    "from_arrays",
    "from_iterable",
    "list_dataset",
    "map",
    "map_batches",
    "merge",
    "normalize",
    "partition",
    "random_crop",
    "random_flip",
    "read_blocks",
    "read_bytes",
    "read_csv",
    "read_dataset",
    "read_jsonl",
    "read_lines",
    "read_log",
    "read_nats",
    "read_npy",
    "read_records",
    "read_redis",
    "rebatch",
    "reduce",
    "reorder",
    "repeat",
    "resample",
    "retry",
    "run",
    "sample",
    "scan",
    "shuffle",
    "skip",
    "take",
    "take_while",
    "tcp_client",
    "tcp_server",
    "throttle",
    "timeout",
    "to_aggregate",
    "to_csv",
    "to_histogram",
    "to_jsonl",
    "to_nats",
    "to_npy",
    "to_parquet",
    "to_quantiles",
    "to_queue",
    "to_redis",
    "to_tcp",
    "to_udp",
    "udp_server",
    "unbatch",
    "unix_server",
    "window",
    "zip",
]
