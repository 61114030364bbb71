"""Private PostgreSQL and Redis servers that a test may stop and start on purpose.

The machine's shared PostgreSQL (5432) and Redis (6379) serve every test run at once: never stop
them. A test that breaks a service starts its own on a free port with these fixtures. Load them
with `pytest_plugins = ("tests.services",)` in the test module, and name the classes only under
`if TYPE_CHECKING:` there: pytest refuses (a warning, an error here) to load as a plugin a module
that was imported first. (Listing it in the root conftest's `pytest_plugins` would lift that.)
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, service_missing


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

    def start(self, timeout: float = 10) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        with open(self.log, "ab") as log:
            self._popen = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """Stop it (SIGTERM: no save, since persistence is off) and wait until it is gone."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
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

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise FileNotFoundError("running as root, and runuser is missing to run PostgreSQL as postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="carbonhook-pg-"))
        self.dir.chmod(0o777)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "-N")

    def start(self) -> None:
        """Start (again, on the same port) and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "30", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop it; `fast` ends every session at once, as a crash or a failover would."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
            self.running = False

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis only this test uses, running; the test may stop and start it."""
    try:
        server = PrivateRedis(tmp_path)
        server.start()
    except (OSError, RuntimeError) as exc:
        service_missing("a private redis-server", exc)
    yield server
    server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster only this test uses, running and empty; the test may stop and start it."""
    try:
        server = PrivatePostgres()
    except OSError as exc:
        service_missing("a private PostgreSQL (initdb, pg_ctl)", exc)
    try:
        server.init()
        server.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        server.remove()
        service_missing("a private PostgreSQL (initdb, pg_ctl)", exc)
    yield server
    server.remove()
