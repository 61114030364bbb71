"""An emulator of the CarbonPass and 1ClickImpact APIs, with fault injection, for sandbox and tests.

Shapes follow the providers' documents as docs/providers.md summarises them: CarbonPass lives under
`/api/v1`, 1ClickImpact at the root, and `/_emulator` is an unauthenticated control API.
Nothing is built at import: call `create_emulator_app()` or `serve_emulator()`.
"""

from carbonhook.emulator.app import create_emulator_app, serve_emulator
from carbonhook.emulator.errors import ConnectionDropped, ConnectionReset, InvalidRequest
from carbonhook.emulator.faults import Fault
from carbonhook.emulator.impact import impact_fields, records_page
from carbonhook.emulator.profile import KIND, PROFILES, STRICT, Profile, named_profile
from carbonhook.emulator.records import IMPACT_KINDS, Cancellation, Impact
from carbonhook.emulator.seeds import DEMO_CARBONPASS_KEY, DEMO_IMPACT_KEY, USER_ID
from carbonhook.emulator.state import EmulatorState

__all__ = [
    "DEMO_CARBONPASS_KEY",
    "DEMO_IMPACT_KEY",
    "IMPACT_KINDS",
    "KIND",
    "PROFILES",
    "STRICT",
    "USER_ID",
    "Cancellation",
    "ConnectionDropped",
    "ConnectionReset",
    "EmulatorState",
    "Fault",
    "Impact",
    "InvalidRequest",
    "Profile",
    "create_emulator_app",
    "impact_fields",
    "named_profile",
    "records_page",
    "serve_emulator",
]
