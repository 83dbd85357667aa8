"""Keyset paging: the one cursor codec every list uses (opaque, URL-safe, ASCII digits only, a clear 422)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from service.broker.errors import InvalidRequest

_MAX_LENGTH = 256
_MAX_DIGITS = 19  # a bigint


class Cursor:
    """The codec of one list's cursor: its position's parts in, an opaque URL-safe string out, and back.

    `field` is the query parameter that carries it (named in the error). A list whose cursors were plain
    numbers joined by `legacy_sep` before this codec still takes those (a backend may hold one), digits
    ASCII only.
    """

    def __init__(self, field: str, legacy_sep: str | None = None) -> None:
        self.field = field
        self.legacy_sep = legacy_sep

    def invalid(self) -> InvalidRequest:
        """The error for a cursor this service did not give out."""
        return InvalidRequest(
            f"`{self.field}` is not a cursor this service gave out; start again without it.", field=self.field
        )

    def encode(self, *parts: str | int) -> str:
        """An opaque cursor for a position (its parts, in order)."""
        text = "|".join(str(p) for p in parts)
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def parts(self, cursor: str, count: int) -> list[str]:
        """The position's parts of a cursor this list gave out, or invalid_request naming the field."""
        if not cursor.isascii() or len(cursor) > _MAX_LENGTH:
            raise self.invalid()
        if self.legacy_sep is not None and cursor.replace(self.legacy_sep, "").isdigit():
            found = cursor.split(self.legacy_sep)
        else:
            try:
                text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
                raise self.invalid() from None
            found = text.split("|")
        if len(found) != count:
            raise self.invalid()
        return found

    def number(self, text: str) -> int:
        """A part that is a whole number: ASCII digits only ('٣' is not 3 here)."""
        if not (text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS):
            raise self.invalid()
        return int(text)

    def numbers(self, cursor: str, count: int) -> list[int]:
        """A cursor whose parts are whole numbers."""
        return [self.number(p) for p in self.parts(cursor, count)]

    def time_and_id(self, cursor: str) -> tuple[datetime, uuid.UUID]:
        """A cursor of (a timestamp, a UUID): newest-first lists ordered by (created_at, id)."""
        at, ident = self.parts(cursor, 2)
        try:
            return datetime.fromisoformat(at), uuid.UUID(ident)
        except ValueError:
            raise self.invalid() from None
