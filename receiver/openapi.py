"""The admin API described as OpenAPI 3: every route, parameter, body and answer.

Served at GET /admin/api/openapi.json (behind the token). tests/receiver/test_openapi.py keeps it
true: its routes are the app's, and schemathesis checks the live API's answers against it.
Objects may carry more properties than listed (the store adds columns over time); the listed
ones are always there.
"""

from __future__ import annotations

from typing import Any

from carbonhook.statuses import CaptureStatus, EventStatus
from receiver.report_openapi import REPORT_SCHEMAS, report_path

MAX_ID = 2**63 - 1  # the id columns are 64-bit integers
DECISIONS = ("approve", "reject", "resolve")
INTERFACES = ("cli", "api", "dashboard")  # what `via` says an admin went through


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    """The error answers: always 401 and 429, plus `codes`."""
    said = {
        400: "a malformed parameter or body (the message says which)",
        401: "no bearer token, or a wrong one",
        404: "no such event, capture or action",
        405: "the path names another route, which does not take this method",
        408: "the body did not arrive in time (the connection is closed)",
        409: "not in a state that allows this",
        413: "the body is over 8 KiB (the connection is closed)",
        415: "multipart bodies are not accepted",
        429: "too many wrong tokens from this address; see Retry-After",
    }
    answers = {str(code): _json(_ref("Error"), said[code]) for code in sorted({401, 429, *codes})}
    answers["429"]["headers"] = {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
    }
    return answers


BODY_ERRORS = (400, 408, 413, 415)


def _id(what: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"the {what}'s id",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_FILTER_TYPE = {"type": "string", "maxLength": 100}
_PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "rows per page (50)"),
    _query(
        "cursor",
        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "`next_cursor` of the previous page",
    ),
]
_REASON = {"type": ["string", "null"], "maxLength": 2000, "description": "why, for the audit"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "EventSummary": {
        "type": "object",
        "required": ["id", "type", "subject_id", "status", "attempts", "received_at"],
        "properties": {
            "id": {"type": "integer"},
            "type": {
                "type": "string",
                "description": "the event's type; empty for an `invalid` event (its body did "
                "not parse)",
            },
            "subject_id": {
                "type": "string",
                "description": "`data.id`; for an `invalid` event, the SHA-256 of its body",
            },
            "event_ts": {"type": "string", "format": "date-time"},
            "received_at": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": list(EventStatus)},
            "attempts": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "EventDetail": {
        "allOf": [
            _ref("EventSummary"),
            {
                "type": "object",
                "required": ["body", "attempt_history", "replays", "captures"],
                "properties": {
                    "body": {"type": "string", "description": "the delivery as received"},
                    "attempt_history": {"type": "array", "items": {"type": "object"}},
                    "replays": {"type": "array", "items": _ref("Replay")},
                    "captures": {"type": "array", "items": _ref("Capture")},
                },
            },
        ]
    },
    "Replay": {
        "type": "object",
        "required": ["at", "admin", "via", "previous_status"],
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "admin": {
                "type": ["string", "null"],
                "description": "who replayed it (null: before admins had names)",
            },
            "via": {"type": "string", "enum": list(INTERFACES)},
            "reason": {"type": ["string", "null"]},
            "previous_status": {"type": "string"},
        },
    },
    "Capture": {
        "type": "object",
        "required": ["id", "event_id", "rule", "subject_id", "action", "amount", "status"],
        "properties": {
            "id": {"type": "integer"},
            "event_id": {"type": "integer"},
            "rule": {"type": "string"},
            "subject_id": {"type": "string"},
            "part": {"type": "integer"},
            "action": {"type": "string"},
            "amount": {"type": "integer"},
            "status": {"type": "string", "enum": list(CaptureStatus)},
            "approved": {"type": "boolean"},
            "attempts": {"type": "integer"},
            "decisions": {"type": "array", "items": _ref("Decision")},
        },
    },
    "Decision": {
        "type": "object",
        "description": "an admin's approve, reject or resolve, and what the capture became",
        "required": ["decision", "status", "at", "admin", "via", "reason"],
        "properties": {
            "decision": {"type": "string", "enum": list(DECISIONS)},
            "status": {"type": "string", "enum": list(CaptureStatus)},
            "at": {"type": "string", "format": "date-time"},
            "admin": {"type": "string", "description": "who decided"},
            "via": {"type": "string", "enum": list(INTERFACES)},
            "reason": {"type": ["string", "null"]},
        },
    },
    "ReplayBody": {
        "type": "object",
        "properties": {"reason": _REASON},
    },
    "BulkReplayBody": {
        "type": "object",
        "description": "at least one filter, here or in the query",
        "properties": {
            "status": {"type": "string", "enum": list(EventStatus)},
            "type": _FILTER_TYPE,
            "since": {"type": "string", "format": "date-time"},
            "reason": _REASON,
        },
    },
    "DecisionBody": {
        "type": "object",
        "description": "resolve needs `captured`; all three take an optional `reason`",
        "properties": {"captured": {"type": "boolean"}, "reason": _REASON},
    },
}

_FILTERS = [
    _query("status", {"type": "string", "enum": list(EventStatus)}, "events with this status"),
    _query(
        "type",
        _FILTER_TYPE,
        "events of this type (crp.generated, bill.confirmed, emissions.catch_up, ...)",
    ),
    _query("since", {"type": "string", "format": "date-time"}, "received at or after (ISO-8601)"),
]


def _body(schema: str) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": _ref(schema)}}}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of /admin/api."""
    events_page = {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": _ref("EventSummary")},
            "next_cursor": {"type": ["integer", "null"]},
        },
    }
    captures_page = {
        "type": "object",
        "required": ["captures", "next_cursor"],
        "properties": {
            "captures": {"type": "array", "items": _ref("Capture")},
            "next_cursor": {"type": ["integer", "null"]},
        },
    }
    replayed = {
        "type": "object",
        "required": ["id", "previous_status", "status"],
        "properties": {
            "id": {"type": "integer"},
            "previous_status": {"type": "string"},
            "status": {"type": "string"},
        },
    }
    bulk = {
        "type": "object",
        "required": ["replayed", "ids"],
        "properties": {
            "replayed": {"type": "integer"},
            "ids": {"type": "array", "items": {"type": "integer"}},
        },
    }
    paths: dict[str, Any] = {
        "/admin/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this document",
                "responses": {
                    "200": _json({"type": "object"}, "the OpenAPI document"),
                    **_errors(),
                },
            }
        },
        "/admin/api/events": {
            "get": {
                "operationId": "listEvents",
                "summary": "events, newest first",
                "parameters": [*_FILTERS, *_PAGE],
                "responses": {"200": _json(events_page, "a page of events"), **_errors(400)},
            }
        },
        "/admin/api/events/replay": {
            "post": {
                "operationId": "replayEvents",
                "summary": "replay every event matching the filters (audited)",
                "parameters": [
                    *_FILTERS,
                    _query("reason", {"type": "string", "maxLength": 2000}, "why, for the audit"),
                ],
                "requestBody": _body("BulkReplayBody"),
                "responses": {"200": _json(bulk, "what was replayed"), **_errors(*BODY_ERRORS)},
            }
        },
        "/admin/api/events/{id}": {
            "get": {
                "operationId": "showEvent",
                "summary": "one event: payload, attempts, replays, captures",
                "parameters": [_id("event")],
                "responses": {
                    "200": _json(_ref("EventDetail"), "the event"),
                    **_errors(404, 405),
                },
            }
        },
        "/admin/api/events/{id}/replay": {
            "post": {
                "operationId": "replayEvent",
                "summary": "replay a failed, succeeded, held, ignored or waiting (check now) event, or parse an invalid one again (audited)",
                "parameters": [_id("event")],
                "requestBody": _body("ReplayBody"),
                "responses": {
                    "200": _json(replayed, "queued again"),
                    **_errors(*BODY_ERRORS, 404, 409),
                },
            }
        },
        "/admin/api/captures": {
            "get": {
                "operationId": "listCaptures",
                "summary": "the ledger, newest first",
                "parameters": [
                    _query(
                        "status",
                        {"type": "string", "enum": list(CaptureStatus)},
                        "rows with this status",
                    ),
                    *_PAGE,
                ],
                "responses": {"200": _json(captures_page, "a page of the ledger"), **_errors(400)},
            }
        },
        "/admin/api/captures/{id}/{decision}": {
            "post": {
                "operationId": "decideCapture",
                "summary": "approve or reject a held capture; resolve an unknown one (audited)",
                "parameters": [
                    _id("capture"),
                    {
                        "name": "decision",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(DECISIONS)},
                    },
                ],
                "requestBody": _body("DecisionBody"),
                "responses": {
                    "200": _json(_ref("Capture"), "the capture as it now is"),
                    **_errors(*BODY_ERRORS, 404, 409),
                },
            }
        },
        "/admin/api/report": report_path(_errors(400), _query),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "carbonhook admin API",
            "version": "1",
            "description": (
                "Only when an admin is configured (CARBONHOOK_ADMIN_TOKEN, "
                "CARBONHOOK_ADMIN_TOKENS); each request acts as the admin whose bearer token it "
                "carries, and replays and decisions record that admin's name. JSON everywhere."
            ),
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS | REPORT_SCHEMAS,
        },
    }
