"""The processes a benchmark starts: each one logged to a file, stopped by its own pid only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str], root: Path = ROOT) -> dict[str, str]:
    """This environment without any CARBONHOOK_* setting of the caller's, plus `extra`; the
    code imported is `root`'s (the installed package is an editable one of this tree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONHOOK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return {**env, **extra}


class Process:
    """A child process (python -m ...), its output in `log`."""

    def __init__(
        self, name: str, args: list[str], env: Mapping[str, str], log: Path, root: Path = ROOT
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            env=clean_env(env, root),
            cwd=root,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_http(self, url: str, timeout: float = 30) -> None:
        """Wait until `url` answers at all (any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            try:
                httpx.get(url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name}: {url} did not answer in {timeout}s")

    def wait_output(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until `text` appears `count` times in the log."""
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {text!r} x{count} in {timeout}s")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """This process and its descendants (a supervisor's worker children)."""
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            todo += [int(child) for child in children]
        return found

    def peak_rss_mib(self) -> dict[int, float]:
        """Peak resident memory (VmHWM) of this process and of each descendant, in MiB."""
        peaks = {}
        for pid in self.pids():
            kib = _status_field(pid, "VmHWM")
            if kib is not None:
                peaks[pid] = kib / 1024
        return peaks

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; only this process (it stops its children)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._out.close()
        return self.popen.returncode


def _status_field(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time a process has used so far (all its threads), in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15 of stat(5)


def pids_named(command: str) -> list[int]:
    """Every process whose command name is `command` (a server's backends, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class CpuMeter:
    """CPU time used by groups of processes from now on, sampled as often as `sample` is
    called: a process that ends between two samples keeps what the last one saw."""

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self.start: dict[int, int] = {}
        self.last: dict[str, dict[int, int]] = {name: {} for name in groups}
        for pids in groups.values():
            for pid in pids():
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    self.start[pid] = ticks
        self.sample()

    def sample(self) -> None:
        for name, pids in self.groups.items():
            for pid in pids():
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    self.last[name][pid] = ticks

    def seconds(self) -> dict[str, float]:
        """Per group, the CPU seconds used since the meter started."""
        tick = os.sysconf("SC_CLK_TCK")
        return {
            name: sum(ticks - self.start.get(pid, 0) for pid, ticks in seen.items()) / tick
            for name, seen in self.last.items()
        }
