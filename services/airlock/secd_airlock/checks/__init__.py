"""The airlock's automatic checks: pure functions over bytes, no NATS, no database.

`check_outputs` runs them all over a run's outputs and log; `check_line` is the live log's.
Each check is a module with a NAME and a VERSION that its findings carry.
"""

from .base import KINDS, Finding, Kind, OutputFile, Rules, Verdict, worst
from .filetype import reencode_image, sniff
from .logs import check_line, marker, redact_log
from .outputs import FileReport, Report, check_file, check_outputs
from .source import Match, SourceIndex, Table, TableMatch

__all__ = [
    "KINDS",
    "FileReport",
    "Finding",
    "Kind",
    "Match",
    "OutputFile",
    "Report",
    "Rules",
    "SourceIndex",
    "Table",
    "TableMatch",
    "Verdict",
    "check_file",
    "check_line",
    "check_outputs",
    "marker",
    "redact_log",
    "reencode_image",
    "sniff",
    "worst",
]
