"""The tag every capture carries at 1ClickImpact, in `metadata`: which deployment, which ledger
row, which attempt. A record with our tag settles its row exactly; a record with another
deployment's tag (another installation, or a database restored elsewhere) is never ours.

1ClickImpact allows 20 metadata pairs, keys of at most 40 characters and values of at most
500, and reserves `gift` and `widgetID` (docs/providers.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TAG_KEY = "carbonhook_tag"
# Kept from before tags existed: the row's id alone (records made by older versions carry it).
CAPTURE_KEY = "carbonhook_capture"


@dataclass(frozen=True, slots=True)
class Tag:
    deployment: str
    capture_id: int
    attempt: str

    def __str__(self) -> str:
        return f"{self.deployment}/{self.capture_id}/{self.attempt}"


def metadata_for(tag: Tag, *, event_id: int, rule: str) -> dict[str, str]:
    """What a create call sends in `metadata`: the tag, and for people the event and rule."""
    return {
        TAG_KEY: str(tag),
        CAPTURE_KEY: str(tag.capture_id),
        "event": str(event_id),
        "rule": rule[:500],
    }


def tag_of(metadata: Mapping[str, object] | None) -> Tag | None:
    """The tag in a record's `metadata`, or None if it carries none (or a malformed one)."""
    value = (metadata or {}).get(TAG_KEY)
    if not isinstance(value, str):
        return None
    deployment, _, rest = value.partition("/")
    capture_id, _, attempt = rest.partition("/")
    if not deployment or not capture_id.isdigit() or not attempt:
        return None
    return Tag(deployment, int(capture_id), attempt)
