"""Load generators: wrk with bench/signed.lua, or a small asyncio one when wrk is missing.

Both keep `connections` keep-alive connections busy for `seconds` (a closed loop: each
connection sends its next request when the answer to the last one is in) and report requests/s
and latency percentiles the same way.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.deliveries import read_lines

SCRIPT = Path(__file__).with_name("signed.lua")


@dataclass(frozen=True)
class LoadResult:
    generator: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors, timeouts and answers other than 2xx
    wrapped: int  # times a connection ran out of distinct bodies and started over

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "not installed"
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return out.split("Copyright")[0].strip() or "unknown"


def run_load(
    generator: str,
    url: str,
    requests_file: Path,
    *,
    shared: bool,
    connections: int,
    seconds: float,
    threads: int = 1,
) -> LoadResult:
    """Send the file's signed requests to `url` for `seconds`.

    `shared=False` gives each connection (wrk: each thread) its own lines, each sent once while
    they last: new events. `shared=True` cycles every line everywhere: duplicates.
    """
    if generator == "wrk":
        return _run_wrk(url, requests_file, shared, connections, seconds, threads)
    return asyncio.run(_run_python(url, requests_file, shared, connections, seconds))


def _run_wrk(
    url: str, requests_file: Path, shared: bool, connections: int, seconds: float, threads: int
) -> LoadResult:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(requests_file),
        "shared" if shared else "split",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    found = re.search(r"^BENCH (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(found.group(1))
    errors = sum(
        raw[key]
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return LoadResult(
        generator="wrk",
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=errors,
        wrapped=raw["wrapped"],
    )


async def _run_python(
    url: str, requests_file: Path, shared: bool, connections: int, seconds: float
) -> LoadResult:
    """The fallback: raw HTTP/1.1 over asyncio streams, no client library in the way."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    )
    wire = [
        (head + f"X-CarbonPass-Signature: {sig}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        + body
        for sig, body in read_lines(requests_file)
    ]
    latencies: list[float] = []
    counts = {"errors": 0, "wrapped": 0}
    deadline = time.perf_counter() + seconds

    async def connection(index: int) -> None:
        mine = wire if shared else wire[index::connections]
        if not mine:
            return
        reader, writer = await asyncio.open_connection(host, port)
        position = 0
        try:
            while time.perf_counter() < deadline:
                if position == len(mine):
                    position = 0
                    counts["wrapped"] += 1
                started = time.perf_counter()
                writer.write(mine[position])
                position += 1
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    counts["errors"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0
        )

    return LoadResult(
        generator="python",
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
        errors=counts["errors"],
        wrapped=counts["wrapped"],
    )


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status
