"""Where a worker's time per event goes: `python -m bench.steps [--threads N] [--latency-ms MS]`.

Runs the real `Processor` in this process (N threads, no broker) on PostgreSQL against the
emulator, and prints events/s, the ratio to the latency x threads bound, the CPU time of this
process per event (the emulator runs in a process of its own) and the mean wall time per event
of each database step and of the API calls.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from dramatiq.brokers.stub import StubBroker

from bench import deliveries
from bench.harness import CP_KEY, IMPACT_KEY, RULES
from bench.processes import ROOT, Process, free_port
from bench.stores import PostgresDatabases
from carbonhook.cli.bootstrap import build_worker
from carbonhook.settings import Settings
from receiver.events import parse_delivery
from receiver.intake import create_intake

DB_STEPS = {"store": ("claim", "finish"), "ledger": ("ensure", "begin_attempt")}
API_STEPS = {"carbonpass": ("crp",), "impact": ("create",)}


def store_all(database: str, bodies: list[bytes]) -> list[int]:
    async def record() -> list[int]:
        intake = create_intake(database)
        try:
            return [(await intake.record(parse_delivery(body))).id for body in bodies]
        finally:
            await intake.close()

    return asyncio.run(record())


def timed(owner: Any, name: str, totals: dict[str, float], key: str, lock: threading.Lock) -> None:
    """Wrap `owner.name` so its wall time adds up in `totals[key]`."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            with lock:
                totals[key] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--events-per-thread", type=int, default=24)
    args = parser.parse_args()

    databases = PostgresDatabases()
    database = databases.create("steps")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = Process(
        "emulator",
        ["-m", "carbonhook", "emulate", "--port", str(port)],
        {},
        ROOT / "bench" / "out" / "steps-emulator.log",
    )
    try:
        emulator.wait_http(f"{url}/_emulator/calls")
        httpx.post(f"{url}/_emulator/latency", json={"ms": args.latency_ms}, timeout=10)
        settings = Settings(
            database_url=database,
            broker_url="memory://",
            webhook_secrets="bench",
            carbonpass_api_key=CP_KEY,
            impact_api_key=IMPACT_KEY,
            carbonpass_api_url=f"{url}/api/v1",
            impact_api_url=url,
            rules_file=RULES,
        )
        runtime = build_worker(settings, broker=StubBroker())
        processor = runtime.processor
        processor.enqueue = lambda event_id, delay: None
        count = args.events_per_thread * args.threads
        now = datetime.now(UTC)
        waiting = store_all(
            database, [deliveries.delivery(f"crp_steps{n}", now) for n in range(count)]
        )

        lock = threading.Lock()
        totals: dict[str, float] = {}
        for group in (DB_STEPS, API_STEPS):
            for attribute, names in group.items():
                for name in names:
                    totals[name] = 0.0
                    timed(getattr(processor, attribute), name, totals, name, lock)

        def work() -> None:
            while True:
                with lock:
                    if not waiting:
                        return
                    event_id = waiting.pop()
                processor.process(event_id)

        started, cpu_started = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        runtime.close()
    finally:
        emulator.stop()
        databases.drop_all()

    rate = count / elapsed
    line = f"{args.threads} thread(s), {args.latency_ms:g} ms per call: {rate:.1f} events/s"
    if args.latency_ms:
        bound = args.threads / (2 * args.latency_ms / 1000)
        line += f", {rate / bound:.1%} of the bound ({bound:.0f}/s)"
    print(line)
    print(f"CPU of this process per event: {cpu / count * 1000:.2f} ms")
    database_ms = sum(totals[name] for names in DB_STEPS.values() for name in names)
    print(f"per event, mean wall time: database {database_ms / count * 1000:.1f} ms", end="")
    print("".join(f", {name} {totals[name] / count * 1000:.1f}" for name in totals))


if __name__ == "__main__":
    main()
