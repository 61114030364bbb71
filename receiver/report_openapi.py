"""The impact report's part of the admin API's OpenAPI document (receiver/openapi.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from carbonhook.impact_report import GROUPINGS

API_FORMATS = ("json", "csv")  # the API's answers; a table is the command line's


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": list(properties),
        "properties": properties,
    }


REPORT_SCHEMAS: dict[str, Any] = {
    "ImpactReport": _object(
        {
            "from": {"type": "string", "format": "date"},
            "to": {"type": "string", "format": "date", "description": "included"},
            "by": {"type": "string", "enum": list(GROUPINGS)},
            "generated_at": {"type": "string", "format": "date-time"},
            "impacts": {"type": "array", "items": {"$ref": "#/components/schemas/Impact"}},
            "totals": {"type": "array", "items": {"$ref": "#/components/schemas/ImpactTotal"}},
            "coverage": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/PeriodCoverage"},
            },
            "emissions_note": _nullable("string"),
            "reversed_duplicates": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ReversedDuplicate"},
            },
        },
        "impacts standing at 1ClickImpact, placed by the time it recorded them (`time_utc`)",
    ),
    "Impact": _object(
        {
            "capture_id": {"type": "integer"},
            "event_id": {"type": "integer"},
            "rule": {"type": "string"},
            "subject_id": {"type": "string", "description": "the CRP's or the bill's id"},
            "site_id": _nullable("string"),
            "period": _nullable("string"),
            "action": {"type": "string"},
            "amount": {"type": "integer"},
            "unit": {"type": "string"},
            "customer_email": _nullable("string"),
            "customer_name": _nullable("string"),
            "customer_id": _nullable("string"),
            "user_id": {
                "type": ["string", "null"],
                "description": "1ClickImpact's proof with `time_utc` (null: resolved by an admin)",
            },
            "time_utc": _nullable("string"),
            "recorded_on": {"type": "string", "format": "date"},
        },
        "one standing impact",
    ),
    "ImpactTotal": _object(
        {
            "group": {"type": "string"},
            "action": {"type": "string"},
            "unit": {"type": "string"},
            "impacts": {"type": "integer"},
            "amount": {"type": "integer"},
            "tonnes_co2e": {
                "type": ["number", "null"],
                "description": "capture_carbon's pounds in tonnes",
            },
        },
        "what one group captured of one action",
    ),
    "PeriodCoverage": _object(
        {
            "period": {"type": "string"},
            "tonnes_offset": {"type": "number"},
            "emissions_tco2e": _nullable("number"),
            "share_percent": _nullable("number"),
            "note": _nullable("string"),
        },
        "a reporting period's tonnes offset beside the company's emissions from CarbonPass",
    ),
    "ReversedDuplicate": _object(
        {
            "capture_id": {"type": "integer"},
            "rule": {"type": "string"},
            "subject_id": {"type": "string"},
            "action": {"type": "string"},
            "amount": {"type": "integer"},
            "customer_email": _nullable("string"),
            "user_id": {"type": "string"},
            "time_utc": {"type": "string"},
            "reason": {"type": "string"},
            "cancelled_at": _nullable("string"),
            "error": _nullable("string"),
        },
        "an impact standing twice, reversed by the audit: never counted",
    ),
}


def report_path(
    errors: dict[str, Any], query: Callable[[str, dict[str, Any], str], dict[str, Any]]
) -> dict[str, Any]:
    """`GET /admin/api/report`, answering with `errors` besides 200; `query` describes a
    query parameter."""
    day = {"type": "string", "format": "date"}
    return {
        "get": {
            "operationId": "impactReport",
            "summary": "the impact report: standing impacts, totals, emissions covered",
            "parameters": [
                query("from", day, "first UTC day (YYYY-MM-DD; default: this month's first)"),
                query("to", day, "last UTC day, included (default: today)"),
                query("by", {"type": "string", "enum": list(GROUPINGS)}, "totals by (month)"),
                query("format", {"type": "string", "enum": list(API_FORMATS)}, "json or csv"),
            ],
            "responses": {
                "200": {
                    "description": "the report (CSV: the standing impacts, one a line)",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ImpactReport"}
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                **errors,
            },
        }
    }
