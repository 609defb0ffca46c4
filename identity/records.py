"""What the broker keeps in its store as structured values: versioned records.

Each kind of record is one frozen model derived from :class:`StoredRecord` with a ``v``
literal (``v: Literal[1] = 1``), written with ``TypeAdapter.dump_json`` and read with
:func:`read_record`. A stored value of an older version, of another shape, or that is not
JSON at all reads as absent: the caller then behaves as if nothing had been stored.
"""

from __future__ import annotations

from typing import Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

__all__ = ["StoredRecord", "read_record"]

RecordT = TypeVar("RecordT", bound="StoredRecord")


class StoredRecord(BaseModel):
    """Base of every stored record: frozen, strictly typed, no unknown fields.

    ``v`` has a default so that code building a record never names the version, but a
    stored value must carry it: one without ``v`` is refused rather than read as the
    current version.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    @model_validator(mode="after")
    def _stored_with_a_version(self, info: ValidationInfo) -> Self:
        if info.mode == "json" and "v" not in self.model_fields_set:
            raise ValueError("a stored record carries its version 'v'")
        return self


def read_record(adapter: TypeAdapter[RecordT], raw: bytes | None) -> RecordT | None:
    """The record in ``raw``, or None when there is none or it is not a record of the
    adapter's kind and version."""
    if raw is None:
        return None
    try:
        return adapter.validate_json(raw)
    except ValidationError:
        return None
