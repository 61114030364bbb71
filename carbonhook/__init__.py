"""carbonhook's ground floor, which the receiver and the workers both stand on: the vocabulary
(statuses, actions, errors), the schema and database access, the event store, the capture
ledger and its spend, settings, the queue hand-off, metrics and logs."""

from __future__ import annotations

from carbonhook.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "ACTIONS": "carbonhook.actions",
        "Action": "carbonhook.actions",
        "Admin": "carbonhook.admin",
        "CaptureRow": "carbonhook.capture_rows",
        "CaptureStatus": "carbonhook.statuses",
        "CarbonhookError": "carbonhook.errors",
        "EventFilter": "carbonhook.event_queries",
        "EventStatus": "carbonhook.statuses",
        "EventStore": "carbonhook.store",
        "Impact": "carbonhook.captures",
        "Ledger": "carbonhook.ledger",
        "PlannedCapture": "carbonhook.captures",
        "Settings": "carbonhook.settings",
        "create_sync_engine": "carbonhook.database",
        "load_settings": "carbonhook.settings",
        "make_broker": "carbonhook.queue",
        "metrics": "carbonhook.metrics",
        "upgrade": "carbonhook.migrate",
    },
)
