"""datakit: instruction-tuning data in one canonical record, and tools over it."""

from datakit.convert import (
    ConversionError,
    Summary,
    convert,
    open_records,
    read_records,
    write_dataset_info,
    write_records,
)
from datakit.formats import FORMATS, FormatError, ReadOptions
from datakit.inspect import inspect
from datakit.io import InputError, read_rows
from datakit.pipeline import run
from datakit.record import CANONICAL_SCHEMA, RecordError, from_frame, message, new_record, to_frame, validate

__version__ = "0.1.0"

__all__ = [
    "CANONICAL_SCHEMA",
    "FORMATS",
    "ConversionError",
    "FormatError",
    "InputError",
    "ReadOptions",
    "RecordError",
    "Summary",
    "convert",
    "from_frame",
    "inspect",
    "message",
    "new_record",
    "open_records",
    "read_records",
    "read_rows",
    "run",
    "to_frame",
    "validate",
    "write_dataset_info",
    "write_records",
]
