"""Private PostgreSQL and Redis servers on free loopback ports, started, stopped and crashed on
purpose: by the soak (bench/soak) and, through tests/services.py, by the tests.

The machine's shared PostgreSQL (5432) and Redis (6379) serve everyone at once: never stop them.
Whoever breaks a service starts its own with these classes. Nothing here needs pytest.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.processes import free_port


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """`redis-server` on a free loopback port, without persistence (a restart loses everything)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / f"redis-{self.port}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self.running and self._popen is not None else None

    def start(self, timeout: float = 10) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        with open(self.log, "ab") as log:
            self._popen = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # ended by its owner, not by a Ctrl-C at the terminal
            )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """Stop it (SIGTERM: no save, since persistence is off) and wait until it is gone."""
        self._end(signal.SIGTERM, timeout)

    def crash(self) -> None:
        """SIGKILL: what an out-of-memory kill or a lost machine looks like to its clients."""
        self._end(signal.SIGKILL, 10)

    def _end(self, sig: int, timeout: float) -> None:
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._popen.send_signal(sig)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(5)
        self._popen = None

    def ping(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


def postgres_bindir() -> Path:
    """Where `initdb`, `pg_ctl` and `postgres` live (Debian's layout, else PATH)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found is not None and shutil.which("pg_ctl") is not None:
        return Path(found).parent
    raise FileNotFoundError("initdb and pg_ctl not found (/usr/lib/postgresql/*/bin or PATH)")


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free loopback port, trust auth, user `postgres`.

    PostgreSQL refuses to run as root, so as root its commands run as the `postgres` OS user
    (runuser); the cluster lives in a fresh 0777 directory under the system temp dir, because
    pytest's own tmp directories are private to the user running the tests.
    """

    def __init__(self, max_connections: int | None = None) -> None:
        self.bindir = postgres_bindir()
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise FileNotFoundError("running as root, and runuser is missing to run PostgreSQL as postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="carbonhook-pg-"))
        self.dir.chmod(0o777)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.max_connections = max_connections
        self.running = False

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log[-3000:]}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "-N")

    def start(self, timeout: float = 30) -> None:
        """Start (again, on the same port) and wait until it accepts connections. After a
        crash the old backends may still hold the shared memory for a moment: try again."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        if self.max_connections:
            options += f" -c max_connections={self.max_connections}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "30", "start")
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop it; `fast` ends every session at once, as a failover would; `immediate` quits
        without a shutdown checkpoint, as a crash would (the next start recovers from the WAL)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
            self.running = False

    def crash(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster, as the kernel's OOM killer would, and wait until it has
        gone and the port is closed. Its backends notice on their own and exit; until they
        have, a new start is refused, and `start` tries again."""
        pid = self.postmaster_pid()
        if pid is None:
            self.running = False
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid) or port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL (pid {pid}) still there {timeout:g}s after SIGKILL")
            time.sleep(0.1)
        self.running = False

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid = self.postmaster_pid()
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
