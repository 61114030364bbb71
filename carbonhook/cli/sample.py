"""`carbonhook send-test-event`: a correctly signed sample delivery, as CarbonPass sends one."""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from carbonhook.cli.bootstrap import SANDBOX_SECRET, settings_for
from carbonhook.errors import UsageError
from receiver.signature import HEADER, sign


def send_test_event(args: argparse.Namespace) -> int:
    """Sign a sample delivery like CarbonPass does and print the answer."""
    settings = settings_for()
    secret = args.secret or (
        settings.webhook_secrets[0].get_secret_value()
        if settings.webhook_secrets
        else SANDBOX_SECRET
    )
    body = json.dumps(sample_delivery(args.type, args.subject_id, args.site)).encode()
    try:
        response = httpx.post(
            args.url,
            content=body,
            headers={
                HEADER: sign(body, secret=secret.encode()),
                "Content-Type": "application/json",
            },
            timeout=settings.http_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {args.url}: {exc}") from None
    print(
        f"sent {args.type} {json.loads(body)['data']['id']} → HTTP {response.status_code} {response.text}"
    )
    return 0 if response.is_success else 1


def sample_delivery(event_type: str, subject_id: str | None, site_id: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    token = uuid.uuid4().hex[:10]
    if event_type == "crp.generated":
        return {
            "event": event_type,
            "timestamp": now,
            "data": {"id": subject_id or f"crp_{token}", "status": "published"},
        }
    data = {
        "id": subject_id or f"bill_{token}",
        "status": "confirmed",
        "siteId": site_id,
        "sessionId": "sess_aB12",
        "type": "electricity",
    }
    return {"event": event_type, "timestamp": now, "data": data}
