"""What the emulator knows when it starts: the demo keys and the providers' documented examples."""

from __future__ import annotations

from typing import Any

DEMO_CARBONPASS_KEY = "cp_live_sandbox"
DEMO_IMPACT_KEY = "test_sandbox"

# The account every 1ClickImpact answer names (seed 000).
USER_ID = "U123"

# The examples of the CarbonPass document (seed 003), as the emulator starts.
SEED_COMPANY: dict[str, Any] = {
    "id": "comp_8xK2mNpQ",
    "name": "Acme Industries Ltd",
    "sector": "Manufacturing",
    "city": "Birmingham",
    "employeeCount": 42,
    "planName": "business",
    "currentEmissions": {
        "reportingPeriod": "2025-26",
        "totalTco2e": 526.5,
        "scope1": 124.8,
        "scope2": 312.5,
        "scope3": 89.2,
    },
    "passportUrl": "https://carbonpass.co/company/acme-industries",
    "passportActivated": True,
}
SEED_SITE: dict[str, Any] = {
    "id": "site_3rZ1",
    "name": "Birmingham Warehouse",
    "city": "Birmingham",
    "employeeCount": 28,
}
SEED_SESSION = {"id": "sess_aB12", "createdAt": "2026-03-15"}
# The seed site's emissions: total, then scopes 1 to 3 (tCO2e).
SEED_SITE_EMISSIONS = (172.0, 42.1, 108.3, 21.6)
SEED_CRP_ID = "crp_5tN8xBmQ"
SEED_CRP_GENERATED_AT = "2026-04-06T14:35:48Z"
CRP_SECTIONS = (
    "organisationDetails",
    "baselineEmissions",
    "currentEmissions",
    "reductionTargets",
    "reductionProjects",
    "environmentalMeasures",
    "declaration",
)
