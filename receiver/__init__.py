"""The edge where HTTP comes in, and only that: the signature check, a delivery as a value
object, the intake, the admin API and the dashboard."""

from __future__ import annotations

from carbonhook.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "create_app": "receiver.app",
        "Services": "receiver.app",
        "Delivery": "receiver.events",
        "parse_delivery": "receiver.events",
        "verify_signature": "receiver.signature",
        "sign": "receiver.signature",
        "dashboard_routes": "receiver.dashboard",
        "admin_api_routes": "receiver.admin",
        "AdminOperations": "receiver.admin",
        "create_intake": "receiver.intake",
        "Lockout": "receiver.lockout",
    },
)
