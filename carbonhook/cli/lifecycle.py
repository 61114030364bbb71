"""A process's life: servers on threads, signals, and what start-up leaves to the collector."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import uvicorn

from carbonhook.errors import RulesError
from workers.rules import RulesHolder

log = logging.getLogger("carbonhook")
Lifespan = Literal["auto", "on", "off"]


class ThreadServer:
    """A uvicorn server on a background thread (the sandbox's emulator)."""

    def __init__(self, app: Any, host: str, port: int, *, lifespan: Lifespan = "off") -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, name="carbonhook-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("emulator did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def start_server(app: Any, host: str, port: int, *, lifespan: Lifespan = "off") -> ThreadServer:
    """Serve `app` on a background thread; port 0 picks a free one (see `.port`)."""
    return ThreadServer(app, host, port, lifespan=lifespan).start()


def freeze_start_up_objects() -> None:
    """Keep what start-up built (modules, settings, tables: ~120,000 objects) out of the
    cyclic garbage collector: a full collection over them stalled a process for ~100 ms (the
    receiver's event loop, or every worker thread), and they live as long as the process."""
    gc.collect()
    gc.freeze()


def exit_quietly_after_shutdown() -> None:
    """uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the
    previous handler; a no-op handler lets our own clean-up run and the process exit 0."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets; SIGHUP does nothing until `wait_for_signal` gives
    it a handler (its default would end the process)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: None)
    return stop


def wait_for_signal(
    on_reload: Callable[[], None] | None = None, stop: threading.Event | None = None
) -> None:
    """Block until SIGTERM or SIGINT (or until `stop`, from `stop_on_signals`, is set);
    SIGHUP calls `on_reload`."""
    stop = stop or stop_on_signals()
    if on_reload is not None:
        signal.signal(signal.SIGHUP, lambda *_: on_reload())
    while not stop.wait(1):
        pass


def install_reload(rules: RulesHolder) -> None:
    """SIGHUP reloads the rules file."""
    signal.signal(signal.SIGHUP, lambda *_: reload_rules(rules))


def reload_rules(rules: RulesHolder) -> None:
    try:
        ruleset = rules.reload()
    except RulesError as exc:
        log.error("rules not reloaded, the old ones stay: %s", exc)
        return
    log.info("rules reloaded from %s (sha256 %s)", ruleset.path, ruleset.sha256[:12])
