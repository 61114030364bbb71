"""The ceiling: a bare Starlette endpoint that reads the body, checks the same HMAC and answers
202, storing nothing. Served with the same uvicorn options as `carbonhook serve`, so the
receiver's figures divided by this one's say what storing and queueing cost.

Run: python bench/ceiling.py --port 8001 --secret S
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from carbonhook.errors import SignatureError
from receiver.signature import HEADER, verify_signature


def create_ceiling_app(secret: bytes) -> Starlette:
    """POST /webhooks/carbonpass: 202 for a good signature, 401 otherwise."""

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            verify_signature(body, request.headers.get(HEADER), secrets=(secret,))
        except SignatureError as exc:
            return JSONResponse({"error": "invalid_signature", "message": str(exc)}, 401)
        return JSONResponse({"id": 0, "status": "accepted"}, status_code=202)

    return Starlette(routes=[Route("/webhooks/carbonpass", receive, methods=["POST"])])


def serve_options(host: str, port: int) -> dict[str, Any]:
    """What `carbonhook serve` (carbonhook/cli/processes.py) passes to uvicorn.run with one worker
    and no TLS: loop and http stay "auto" there (uvloop and httptools when installed)."""
    return {
        "host": host,
        "port": port,
        "workers": 1,
        "factory": False,
        "log_level": "warning",
        "proxy_headers": True,
        "server_header": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    uvicorn.run(create_ceiling_app(args.secret.encode()), **serve_options(args.host, args.port))


if __name__ == "__main__":
    main()
