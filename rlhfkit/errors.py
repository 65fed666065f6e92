"""User-facing errors.

Every error a user can cause by bad input (a config key, a data row, a model path) is a
subclass of :class:`RlhfkitError`. The CLI catches these and prints the message alone, with
no traceback, so the message must name what is wrong and where (file, row, field or key).
"""

from __future__ import annotations


class RlhfkitError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""


class ConfigError(RlhfkitError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class DataError(RlhfkitError):
    """A data file or row is malformed.

    ``source`` is the file (or dataset name), ``row`` the 1-based row number in that source
    (None for whole-file problems) and ``field`` the column at fault (None if not one column).
    """

    def __init__(self, reason: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None):
        self.reason = reason
        self.source = source
        self.row = row
        self.field = field
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class ModelError(RlhfkitError):
    """A model or tokenizer cannot be loaded or is unusable (e.g. no distinct pad token)."""


class TrainingError(RlhfkitError):
    """Training cannot go on (e.g. a non-finite loss or gradient); the message says what to do."""
