"""The store's errors: :class:`~rlhfkit.errors.DataError` subclasses (also ``ValueError``) naming
the field, so the CLI prints them without a traceback and the web layer maps each class to a status
code: :class:`NotFoundError` (404), :class:`ConflictError` (409), :class:`StoreError` (400)."""

from __future__ import annotations

from rlhfkit.errors import DataError


class StoreError(DataError, ValueError):
    """Invalid input to the store (a 400 in the web UI); ``field`` names the offending field."""

    def __init__(self, reason: str, *, field: str | None = None):
        super().__init__(reason, source="feedback store", field=field)


class NotFoundError(StoreError):
    """An unknown project, task, annotator or response (a 404)."""


class ConflictError(StoreError):
    """The request clashes with what is stored: already judged differently, name taken, task
    full (a 409)."""


class ForbiddenError(StoreError):
    """The annotator may not do this: the account is deactivated, or the project is for its members
    only (a 403)."""
