"""A JSON document passed on as the text it arrived in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawJson:
    """UTF-8 JSON text that a serializer embeds as it is, without parsing it again.

    InvokeRestApi answers with Airflow's JSON document inside its own; decoding it
    only to encode it again costs time in proportion to its size. Not a ``str``: a
    serializer that does not know it fails loudly instead of quoting it.
    """

    data: bytes
