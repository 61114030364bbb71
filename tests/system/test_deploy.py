"""The recipes in deploy/: they parse, name only real settings, expose only what they must, and
pass the checkers (`docker compose config`, caddy, `systemd-analyze`, promtool), which skip
locally when absent and fail in CI (.ci/run installs them). The alert rules and the dashboard
read only series a live `/metrics` serves."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from carbonhook.errors import SettingsError
from carbonhook.settings import ENV_PREFIX, Settings
from tests.support import CI

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"

SETTING_NAMES = frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)
REQUIRED_SETTINGS = frozenset(
    {
        "CARBONHOOK_DATABASE_URL",
        "CARBONHOOK_BROKER_URL",
        "CARBONHOOK_WEBHOOK_SECRETS",
        "CARBONHOOK_CARBONPASS_API_KEY",
        "CARBONHOOK_IMPACT_API_KEY",
    }
)
APP_SERVICES = ("migrate", "receiver", "worker")
INSTALLED_CARBONHOOK = "/opt/carbonhook/.venv/bin/carbonhook"
UNITS = ("carbonhook-migrate.service", "carbonhook-receiver.service", "carbonhook-worker@.service")
# A compose file's values used for ${...} interpolation when a compose client checks it.
COMPOSE_VARIABLES = {
    "CARBONHOOK_DOMAIN": "hooks.example.com",
    "POSTGRES_PASSWORD": "test-only",
    "REDIS_PASSWORD": "test-only",
}
# `systemd-analyze security`: 0 is fully locked down, 10 fully exposed; "OK" ends at 4.9.
MAX_EXPOSURE = 3.0
# A third-party image by digest, or by a tag naming an exact version (16.6, 7.4.1; not 16 or 7).
PINNED_IMAGE = re.compile(r"[\w./-]+(@sha256:[0-9a-f]{64}|:\d+\.\d+(\.\d+)?(-[\w.-]+)?)")


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def _tool_missing(why: str) -> None:
    """Skip when a checker is absent locally; fail in CI, which installs it (.ci/run)."""
    if CI:
        pytest.fail(f"{why} (CI installs it: .ci/run)")
    pytest.skip(why)


# --- compose.yaml and the Caddyfile -------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def _services(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _env_files(service: dict[str, Any]) -> list[str]:
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str) else entries
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _published_ports(service: dict[str, Any]) -> set[tuple[int, str]]:
    ports: set[tuple[int, str]] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add((int(port["published"]), port.get("protocol", "tcp")))
            continue
        mapping, _, protocol = str(port).partition("/")
        ports.add((int(mapping.split(":")[-2]), protocol or "tcp"))
    return ports


def test_compose_runs_every_part_of_the_service(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= {"postgres", "redis", *APP_SERVICES, "caddy"}


def test_compose_uses_postgresql_16_and_redis_7_with_healthchecks(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert re.fullmatch(r"postgres:16([.@-].*)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7([.@-].*)?", services["redis"]["image"])
    for name in ("postgres", "redis"):
        healthcheck = services[name]["healthcheck"]
        assert healthcheck["test"] and not healthcheck.get("disable", False), name


def test_compose_pins_every_third_party_image(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        if name in APP_SERVICES:
            continue  # carbonhook's own image, built from deploy/Dockerfile
        assert PINNED_IMAGE.fullmatch(service["image"]), f"{name}: {service['image']} is not pinned"
    for stage in _dockerfile_stages():
        base = stage[0][1].split()[0]
        assert PINNED_IMAGE.fullmatch(base), f"Dockerfile: {base} is not pinned"


def test_compose_redis_needs_the_password_the_app_uses(compose: dict[str, Any]) -> None:
    services = _services(compose)
    redis = services["redis"]
    command = _command(redis)
    password = command[command.index("--requirepass") + 1]
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", password), password
    assert (
        _environment(redis)["REDISCLI_AUTH"] == password
    )  # what the healthcheck's redis-cli sends
    for name in APP_SERVICES:
        broker = _environment(services[name])["CARBONHOOK_BROKER_URL"]
        assert broker == f"redis://:{password}@redis:6379/0", name


def test_compose_migrate_runs_once_after_postgres_is_healthy(compose: dict[str, Any]) -> None:
    migrate = _services(compose)["migrate"]
    assert _command(migrate) == ["carbonhook", "migrate"]
    assert migrate.get("restart", "no") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_receiver_and_workers_wait_for_a_successful_migration(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    for name in ("receiver", "worker"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["redis"]["condition"] == "service_healthy", name


def test_compose_app_services_read_the_operators_env_file(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env_files = _env_files(_services(compose)[name])
        assert env_files == ["carbonhook.env"], name
    assert (DEPLOY / "carbonhook.env.example").is_file()


def test_compose_app_services_set_only_real_settings(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        environment = _environment(_services(compose)[name])
        assert set(environment) <= SETTING_NAMES, name
        assert environment["CARBONHOOK_DATABASE_URL"].startswith("postgresql://"), name
        assert environment["CARBONHOOK_BROKER_URL"].startswith("redis://:"), name


def test_compose_runs_the_receiver_and_two_workers(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert _command(services["receiver"])[:2] == ["carbonhook", "serve"]
    assert _command(services["worker"])[:2] == ["carbonhook", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "ports" not in services["receiver"], "only Caddy should reach the receiver"
    # The worker alerts need each worker's /metrics, reachable inside the network only.
    assert "--metrics-port" in _command(services["worker"])
    assert "ports" not in services["worker"]


def test_compose_receiver_trusts_forwarded_headers_from_the_compose_network(
    compose: dict[str, Any],
) -> None:
    command = _command(_services(compose)["receiver"])
    trusted = command[command.index("--forwarded-allow-ips") + 1]
    trusted_networks = [ipaddress.ip_network(item.strip()) for item in trusted.split(",")]
    subnets = [
        ipaddress.ip_network(entry["subnet"])
        for entry in compose["networks"]["default"]["ipam"]["config"]
    ]
    assert subnets
    for subnet in subnets:
        assert any(
            subnet.version == network.version and subnet.subnet_of(network)  # type: ignore[arg-type]
            for network in trusted_networks
        ), f"{subnet} is not covered by --forwarded-allow-ips {trusted}"


def test_compose_caddy_serves_http_and_https_with_the_caddyfile(compose: dict[str, Any]) -> None:
    caddy = _services(compose)["caddy"]
    assert {(80, "tcp"), (443, "tcp")} <= _published_ports(caddy)
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert any(str(volume).endswith(":/data") for volume in caddy["volumes"]), "certificates"
    assert "CARBONHOOK_DOMAIN" in _environment(caddy)


def test_caddyfile_serves_the_domain_from_the_environment_and_proxies_to_the_receiver() -> None:
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert re.search(r"^\{\$CARBONHOOK_DOMAIN\}\s*\{", caddyfile, re.MULTILINE)
    assert re.search(r"^\s*reverse_proxy\s+receiver:8000\s*$", caddyfile, re.MULTILINE)


def test_caddyfile_bounds_bodies_and_reads_and_sets_hsts() -> None:
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    size = re.search(r"request_body\s*\{\s*max_size\s+(\d+)MB\s*\}", caddyfile)
    assert size and 1 <= int(size.group(1)) <= 4, "request_body max_size of a few MB"
    for timeout in ("read_header", "read_body", "write", "idle"):
        assert re.search(rf"^\s*{timeout}\s+\d+[sm]\s*$", caddyfile, re.MULTILINE), timeout
    hsts = re.search(r'header\s+Strict-Transport-Security\s+"max-age=(\d+)', caddyfile)
    assert hsts and int(hsts.group(1)) >= 180 * 86400


def test_compose_file_matches_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (a dev dependency) is absent")
    result = _run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_client() -> tuple[list[str] | None, str]:
    """The compose command (the docker plugin, else Debian's docker-compose, 1.29 or 2.x), or
    None and why there is none."""
    docker = shutil.which("docker")
    if docker is None:
        why = "no docker client is installed"
    else:
        probe = _run([docker, "compose", "version"])
        if probe.returncode == 0:
            return [docker, "compose"], ""
        output = probe.stdout + probe.stderr
        if "unknown command" not in output and "is not a docker command" not in output:
            pytest.fail(f"`docker compose version` failed:\n{output}")
        why = "the docker compose plugin is not installed"
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        version = _run([standalone, "version", "--short"]).stdout.strip()
        if re.match(r"v?(2|1\.(29|[3-9]\d))\.", version):
            return [standalone], ""
        why += f", and docker-compose {version} is older than 1.29"
    return None, why


def test_docker_compose_accepts_the_compose_file(tmp_path: Path) -> None:
    client, why_not = _compose_client()
    if client is None:
        _tool_missing(f"`docker compose config` cannot run: {why_not}")
    # A copy, with the files an operator creates next to it, so the check needs nothing of theirs.
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copy(deploy / "carbonhook.env.example", deploy / "carbonhook.env")
    (deploy / "rules.toml").write_text("")
    (deploy / ".env").unlink(missing_ok=True)
    result = _run(
        [*client, "-f", str(deploy / "compose.yaml"), "config"],
        env={**os.environ, **COMPOSE_VARIABLES},
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    broker = resolved["services"]["receiver"]["environment"]["CARBONHOOK_BROKER_URL"]
    assert broker == "redis://:test-only@redis:6379/0"


def test_caddy_accepts_the_caddyfile() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        _tool_missing("caddy is not installed")
    result = _run(
        [caddy, "adapt", "--adapter", "caddyfile", "--config", str(DEPLOY / "Caddyfile")],
        env={**os.environ, "CARBONHOOK_DOMAIN": "hooks.example.com"},
    )
    assert result.returncode == 0, result.stderr
    adapted = json.loads(result.stdout)
    config = json.dumps(adapted)
    assert '"host": ["hooks.example.com"]' in config
    assert '"dial": "receiver:8000"' in config
    server = next(iter(adapted["apps"]["http"]["servers"].values()))
    for timeout in ("read_header_timeout", "read_timeout", "write_timeout", "idle_timeout"):
        assert 0 < server[timeout] <= 300 * 10**9, timeout  # nanoseconds
    assert '"handler": "request_body", "max_size": 2000000' in config
    assert '"Strict-Transport-Security": ["max-age=31536000; includeSubDomains"]' in config


# --- Dockerfile ---------------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments.strip()))
    return stages


def test_dockerfile_builds_the_wheel_in_a_separate_slim_stage() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    bases = [stage[0][1] for stage in stages]
    assert all(
        re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@\S+)?(\s+AS\s+\S+)?", base, re.IGNORECASE)
        for base in bases
    )
    builder = re.fullmatch(r"\S+\s+AS\s+(\S+)", bases[0], re.IGNORECASE)
    assert builder, "the first stage is named (FROM ... AS name)"
    assert any(
        "pip wheel" in arguments for instruction, arguments in stages[0] if instruction == "RUN"
    )
    final = stages[-1]
    assert any(
        instruction == "COPY" and f"--from={builder.group(1)}" in arguments
        for instruction, arguments in final
    )


def test_dockerfile_installs_the_pinned_versions() -> None:
    installs = [
        arguments
        for instruction, arguments in _dockerfile_stages()[0]
        if instruction == "RUN" and "pip install" in arguments
    ]
    assert installs and all("-c constraints.txt" in arguments for arguments in installs)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [
        arguments for instruction, arguments in _dockerfile_stages()[-1] if instruction == "USER"
    ]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_checks_healthz_with_python() -> None:
    healthchecks = [
        arguments
        for instruction, arguments in _dockerfile_stages()[-1]
        if instruction == "HEALTHCHECK"
    ]
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]
    assert "python" in healthchecks[0] and "curl" not in healthchecks[0]


def test_dockerfile_serves_by_default() -> None:
    commands = [
        arguments for instruction, arguments in _dockerfile_stages()[-1] if instruction == "CMD"
    ]
    assert json.loads(commands[-1]) == [
        "carbonhook",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]


def _dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out (enough of .dockerignore for these patterns)."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip().strip("/") for line in lines if line.strip() and line[0] != "#"]
    assert not any(pattern.startswith("!") for pattern in patterns), "extend this helper for !"
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(
                prefix.split("/")[-1], pattern[3:]
            ):
                return True
    return False


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "carbonhook/settings.py",
        "workers/x.py",
        "migrations/env.py",
        "carbonhook/__init__.py",
        "constraints.txt",
    ],
)
def test_build_context_keeps_what_the_wheel_needs(path: str) -> None:
    assert not _dockerignored(path)


@pytest.mark.parametrize(
    "path", [".git/HEAD", ".venv/bin/python", ".env", "deploy/carbonhook.env", "rules.toml"]
)
def test_build_context_leaves_out_environments_and_operator_secrets(path: str) -> None:
    assert _dockerignored(path)


# --- systemd units ------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> directive -> values (a directive may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(timespan: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)\s*(s|sec|m|min|h)?", timespan)
    assert match, f"unexpected timespan {timespan!r}"
    return int(match.group(1)) * units[match.group(2) or ""]


@pytest.mark.parametrize("name", UNITS)
def test_units_run_the_installed_cli_as_carbonhook_with_the_env_file(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["User"] == ["carbonhook"]
    assert service["EnvironmentFile"] == ["/etc/carbonhook/carbonhook.env"]
    assert len(service["ExecStart"]) == 1
    assert service["ExecStart"][0].startswith(INSTALLED_CARBONHOOK + " ")


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["PrivateTmp"] == ["yes"]
    assert service["ReadWritePaths"]


def test_the_receiver_unit_listens_on_loopback_behind_the_proxy() -> None:
    command = _unit("carbonhook-receiver.service")["Service"]["ExecStart"][0].split()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--forwarded-allow-ips") + 1] == "127.0.0.1"
    assert "--ssl-certfile" not in command  # plain HTTP, so only on loopback


def test_migrate_unit_runs_once() -> None:
    service = _unit("carbonhook-migrate.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == [f"{INSTALLED_CARBONHOOK} migrate"]


@pytest.mark.parametrize(
    ("name", "command", "min_stop_s"),
    [("carbonhook-receiver.service", "serve", 10), ("carbonhook-worker@.service", "worker", 60)],
)
def test_receiver_and_worker_units_need_migrate_restart_and_stop_gracefully(
    name: str, command: str, min_stop_s: int
) -> None:
    unit = _unit(name)
    after = " ".join(unit["Unit"]["After"]).split()
    requires = " ".join(unit["Unit"]["Requires"]).split()
    assert "carbonhook-migrate.service" in after and "carbonhook-migrate.service" in requires
    service = unit["Service"]
    assert service["ExecStart"][0].split()[1] == command
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert _seconds(service["TimeoutStopSec"][0]) >= min_stop_s


def test_each_worker_instance_serves_its_metrics_on_a_port_of_its_own() -> None:
    command = _unit("carbonhook-worker@.service")["Service"]["ExecStart"][0].split()
    port = command[command.index("--metrics-port") + 1]
    assert "%i" in port, "instances on one host need distinct ports"


@pytest.fixture
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        _tool_missing("systemd-analyze is not installed")
    assert path is not None
    return path


@pytest.fixture
def verifiable_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart names an executable that exists on this machine.

    `systemd-analyze verify` refuses a unit whose binary is missing, and the venv under
    /opt/carbonhook exists only on a real host; everything else in the units is left as it is.
    """
    stub = tmp_path / "carbonhook"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert INSTALLED_CARBONHOOK in text, name
        (tmp_path / name).write_text(text.replace(INSTALLED_CARBONHOOK, str(stub)))
    return tmp_path


def _verify(systemd_analyze: str, units: Path) -> str:
    """What `systemd-analyze verify` says about the units (and two worker instances)."""
    names = [
        "carbonhook-migrate.service",
        "carbonhook-receiver.service",
        "carbonhook-worker@1.service",
        "carbonhook-worker@2.service",
    ]
    result = _run([systemd_analyze, "verify", *(str(units / name) for name in names)])
    # verify exits 0 on some problems (an unknown directive is reported, then ignored): any
    # output at all is a finding.
    output = (result.stdout + result.stderr).strip()
    return output or ("" if result.returncode == 0 else f"exit status {result.returncode}")


def test_systemd_accepts_the_units(systemd_analyze: str, verifiable_units: Path) -> None:
    assert _verify(systemd_analyze, verifiable_units) == ""


def _exposure(systemd_analyze: str, unit: Path) -> float:
    """`systemd-analyze security --offline=true`'s overall exposure level of `unit`."""
    result = _run([systemd_analyze, "security", "--offline=true", "--no-pager", str(unit)])
    output = result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert found, output
    return float(found.group(1))


@pytest.mark.parametrize(
    "name",
    ["carbonhook-migrate.service", "carbonhook-receiver.service", "carbonhook-worker@1.service"],
)
def test_systemd_rates_each_unit_exposure_at_most_3(
    systemd_analyze: str,
    verifiable_units: Path,
    name: str,
    record_property: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    template = name.replace("@1.", "@.")
    if template != name:
        (verifiable_units / name).write_text((verifiable_units / template).read_text())
    score = _exposure(systemd_analyze, verifiable_units / name)
    record_property("exposure", score)
    with capsys.disabled():
        print(f"\n  systemd-analyze security {name}: exposure {score}", end="")
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score} > {MAX_EXPOSURE}"


def test_systemd_verification_catches_a_misspelt_directive(
    systemd_analyze: str, verifiable_units: Path
) -> None:
    receiver = verifiable_units / "carbonhook-receiver.service"
    receiver.write_text(receiver.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs="))
    assert "NoNewPrivilegs" in _verify(systemd_analyze, verifiable_units)


# --- Kubernetes manifests -----------------------------------------------------------------------


def _manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path.name, document


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest by (kind, metadata.name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for filename, manifest in _manifests():
        assert manifest.get("apiVersion"), filename
        assert manifest.get("kind"), filename
        assert manifest.get("metadata", {}).get("name"), filename
        key = (manifest["kind"], manifest["metadata"]["name"])
        assert key not in found, f"{key} defined twice"
        found[key] = manifest
    return found


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod = manifest["spec"]["template"]["spec"]
    assert isinstance(pod, dict)
    return pod


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = _pod(manifest)["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _one(manifests: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [manifest for (k, _), manifest in manifests.items() if k == kind]
    assert len(matches) == 1, kind
    return matches[0]


def _deployment(manifests: dict[tuple[str, str], dict[str, Any]], command: str) -> dict[str, Any]:
    matches = [
        manifest
        for (kind, _), manifest in manifests.items()
        if kind == "Deployment" and _container(manifest)["command"][:2] == ["carbonhook", command]
    ]
    assert len(matches) == 1, f"one Deployment runs carbonhook {command}"
    return matches[0]


def test_k8s_has_every_kind(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = sorted(kind for kind, _ in manifests)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Ingress",
        "Job",
        "NetworkPolicy",
        "NetworkPolicy",
        "NetworkPolicy",
        "Secret",
        "Service",
    ]


def test_k8s_workloads_run_the_image_as_non_root_with_the_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = _one(manifests, "ConfigMap")["metadata"]["name"]
    secret = _one(manifests, "Secret")["metadata"]["name"]
    workloads = [m for (kind, _), m in manifests.items() if kind in {"Deployment", "Job"}]
    assert len(workloads) == 3
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod, container = _pod(workload), _container(workload)
        assert container["image"] == "carbonhook:latest", name
        run_as_non_root = container.get("securityContext", {}).get(
            "runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot")
        )
        assert run_as_non_root is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        sources = {
            (kind, ref["name"]) for entry in container["envFrom"] for kind, ref in entry.items()
        }
        assert sources == {("configMapRef", config), ("secretRef", secret)}, name


def test_k8s_receiver_probes_readyz_and_healthz(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    container = _container(_deployment(manifests, "serve"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {port.get("name") for port in container["ports"]}
    port_numbers = {port["containerPort"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names | port_numbers


def test_k8s_receiver_trusts_forwarded_headers_only_from_the_ingress_pods_cidr(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    container = _container(_deployment(manifests, "serve"))
    assert "--forwarded-allow-ips" not in container["command"], "set in configmap.yaml"
    trusted = _one(manifests, "ConfigMap")["data"]["CARBONHOOK_FORWARDED_ALLOW_IPS"]
    networks = [ipaddress.ip_network(item.strip()) for item in trusted.split(",")]
    assert networks and all(network.is_private and network.prefixlen >= 8 for network in networks)
    assert "CARBONHOOK_FORWARDED_ALLOW_IPS" in (K8S / "configmap.yaml").read_text()
    comment = (K8S / "configmap.yaml").read_text().split("CARBONHOOK_FORWARDED_ALLOW_IPS:")[0]
    assert "ingress controller" in comment.rsplit("\n\n", 1)[-1], "the setting is documented"


def _policies(manifests: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for (kind, _), m in manifests.items() if kind == "NetworkPolicy"]


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "extend this helper"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    return dict(manifest["spec"]["template"]["metadata"]["labels"])


def test_k8s_only_the_ingress_reaches_the_receiver_and_only_prometheus_its_metrics(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    receiver = _deployment(manifests, "serve")
    config = _one(manifests, "ConfigMap")["data"]
    ports = {port["name"]: port["containerPort"] for port in _container(receiver)["ports"]}
    assert ports == {"http": 8000, "metrics": int(config["CARBONHOOK_METRICS_PORT"])}
    policies = [p for p in _policies(manifests) if _selects(p, _pod_labels(receiver))]
    assert len(policies) == 1
    policy = policies[0]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    allowed: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from") and rule.get("ports"), "every rule names its peers and ports"
        for port in rule["ports"]:
            allowed.setdefault(port["port"], []).extend(rule["from"])
    assert set(allowed) == {"http", "metrics"}
    for port, who in (("http", "ingress-nginx"), ("metrics", "prometheus")):
        for peer in allowed[port]:
            assert "ipBlock" not in peer
            assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == who, port
            assert peer["namespaceSelector"]["matchLabels"], port


def test_k8s_workers_accept_only_prometheus_on_their_metrics_port(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    worker = _deployment(manifests, "worker")
    command = _container(worker)["command"]
    port = int(command[command.index("--metrics-port") + 1])
    assert {p["name"]: p["containerPort"] for p in _container(worker)["ports"]} == {"metrics": port}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    policies = [p for p in _policies(manifests) if _selects(p, _pod_labels(worker))]
    assert len(policies) == 1
    rules = policies[0]["spec"]["ingress"]
    assert [port["port"] for rule in rules for port in rule["ports"]] == ["metrics"]
    for peer in (peer for rule in rules for peer in rule["from"]):
        assert "ipBlock" not in peer
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"
        assert peer["namespaceSelector"]["matchLabels"]


def test_k8s_migrations_accept_no_connections(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    job = _one(manifests, "Job")
    policies = [p for p in _policies(manifests) if _selects(p, _pod_labels(job))]
    assert policies, job["metadata"]["name"]
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert not policy["spec"].get("ingress"), "no rule: nothing may connect"


def test_k8s_every_empty_dir_has_a_size_limit(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    seen = 0
    for (kind, name), manifest in manifests.items():
        if kind not in {"Deployment", "Job"}:
            continue
        for volume in _pod(manifest).get("volumes", []):
            if "emptyDir" in volume:
                seen += 1
                assert volume["emptyDir"].get("sizeLimit"), f"{name}: {volume['name']}"
    assert seen >= 2


def test_k8s_service_selects_the_receiver_pods(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    receiver = _deployment(manifests, "serve")
    service = _one(manifests, "Service")
    labels = receiver["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = _container(receiver)["ports"]
    targets = {port.get("name") for port in ports} | {port["containerPort"] for port in ports}
    assert all(port["targetPort"] in targets for port in service["spec"]["ports"])


def test_k8s_ingress_serves_the_webhook_over_tls(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    ingress = _one(manifests, "Ingress")
    service = _one(manifests, "Service")
    annotations = ingress["metadata"]["annotations"]
    assert any(key.startswith("cert-manager.io/") for key in annotations)
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert all(entry["secretName"] for entry in ingress["spec"]["tls"])
    service_ports = {port["name"] for port in service["spec"]["ports"]} | {
        port["port"] for port in service["spec"]["ports"]
    }
    routed: list[str] = []
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert set(backend["port"].values()) <= service_ports
            routed.append(path["path"])
    assert any("/webhooks/carbonpass".startswith(path) for path in routed)


def test_k8s_workers_get_time_to_finish_captures(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    worker = _deployment(manifests, "worker")
    assert _pod(worker)["terminationGracePeriodSeconds"] >= 60


def test_k8s_job_runs_migrate(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = _one(manifests, "Job")
    container = _container(job)
    assert [*container.get("command", []), *container.get("args", [])] == ["carbonhook", "migrate"]
    assert _pod(job)["restartPolicy"] in {"Never", "OnFailure"}


def test_k8s_rules_file_is_mounted(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    rules_dir = str(Path(_one(manifests, "ConfigMap")["data"]["CARBONHOOK_RULES_FILE"]).parent)
    for command in ("serve", "worker"):
        deployment = _deployment(manifests, command)
        volumes = {volume["name"]: volume for volume in _pod(deployment)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
        assert "configMap" in volumes[mounts[rules_dir]], command


def test_k8s_settings_are_real_and_secrets_are_placeholders(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = _one(manifests, "ConfigMap")["data"]
    secret = _one(manifests, "Secret")
    assert "data" not in secret, "placeholders go in stringData"
    secrets = secret["stringData"]
    assert set(config) <= SETTING_NAMES and set(secrets) <= SETTING_NAMES
    assert not set(config) & set(secrets)
    assert set(secrets) >= REQUIRED_SETTINGS
    for name, value in secrets.items():
        assert "change-me" in value or ".example." in value, f"{name} is not a placeholder"


REAL_SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
CHECKED_SECRETS = (
    "CARBONHOOK_WEBHOOK_SECRETS",
    "CARBONHOOK_ADMIN_TOKEN",
    "CARBONHOOK_CARBONPASS_API_KEY",
    "CARBONHOOK_IMPACT_API_KEY",
)


def _refused_at_start_up(values: dict[str, str], name: str) -> str:
    """What check_production says with `values` real but `name`'s example value."""
    real = {key: REAL_SECRET for key in CHECKED_SECRETS}
    settings = Settings(_env_file=None, **{**_fields(real), **_fields({name: values[name]})})  # type: ignore[call-arg]
    with pytest.raises(SettingsError) as refused:
        settings.check_production()
    return str(refused.value)


def _fields(values: dict[str, str]) -> dict[str, str]:
    return {key.removeprefix(ENV_PREFIX).lower(): value for key, value in values.items()}


@pytest.mark.parametrize("name", CHECKED_SECRETS)
def test_k8s_secret_placeholders_stop_the_service_at_start_up(
    manifests: dict[tuple[str, str], dict[str, Any]], name: str
) -> None:
    secrets = _one(manifests, "Secret")["stringData"]
    assert _refused_at_start_up(secrets, name).startswith(name + ": ")
    assert "openssl rand -hex 32" in (K8S / "secret.yaml").read_text()


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (a dev dependency) is absent"
    )
    version = kubernetes_validate.latest_version()
    for filename, manifest in _manifests():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{filename} {manifest['kind']}: {error.message}")


# --- carbonhook.env.example ---------------------------------------------------------------------

ENV_LINE = re.compile(r"^(?P<comment>#\s*)?(?P<name>CARBONHOOK_[A-Z0-9_]+)=(?P<value>.*)$")


def _env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(set, commented out) NAME=value lines of the example."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in (DEPLOY / "carbonhook.env.example").read_text().splitlines():
        match = ENV_LINE.match(line.strip())
        if match is None:
            assert line.strip() == "" or line.startswith("#"), f"unexpected line: {line!r}"
            continue
        target = commented if match["comment"] else active
        assert match["name"] not in target, f"{match['name']} appears twice"
        target[match["name"]] = match["value"]
    return active, commented


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_env_example_names_only_real_settings() -> None:
    active, commented = _env_example()
    assert set(active) | set(commented) <= SETTING_NAMES


def test_env_example_sets_every_required_setting() -> None:
    active, _ = _env_example()
    assert set(active) >= REQUIRED_SETTINGS


def test_env_example_values_suit_both_compose_and_systemd() -> None:
    active, _ = _env_example()
    for name, value in active.items():
        assert value and value == value.strip(), name
        assert value[0] not in "\"'" and " #" not in value, f"{name}: no quotes or inline comments"


@pytest.mark.parametrize("name", CHECKED_SECRETS)
def test_env_example_placeholders_stop_the_service_at_start_up(name: str) -> None:
    active, commented = _env_example()
    assert _refused_at_start_up({**commented, **active}, name).startswith(name + ": ")
    assert "openssl rand -hex 32" in (DEPLOY / "carbonhook.env.example").read_text()


def test_env_example_loads_as_settings(tmp_path: Path, clean_environment: None) -> None:
    active, commented = _env_example()
    env_file = tmp_path / "carbonhook.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**commented, **active}.items()))
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.database_url.get_secret_value().startswith("postgresql://")
    assert settings.broker_url.get_secret_value().startswith(("redis://", "amqp://"))
    assert settings.webhook_secrets


def test_env_example_shows_the_real_defaults_of_the_commented_settings(
    tmp_path: Path, clean_environment: None
) -> None:
    _, commented = _env_example()
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for name, value in commented.items():
        field = name.removeprefix(ENV_PREFIX).lower()
        if Settings.model_fields[field].default in (None, ()):
            continue  # an example value for a setting that is off by default
        env_file = tmp_path / "one.env"
        env_file.write_text(f"{name}={value}\n")
        shown = Settings(_env_file=env_file)  # type: ignore[call-arg]
        assert getattr(shown, field) == getattr(defaults, field), (
            f"{name}={value} in deploy/carbonhook.env.example is not the default"
        )


# --- Prometheus alerts and the Grafana dashboard ------------------------------------------------

PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "carbonhook.json"
README = DEPLOY.parent / "README.md"
SEVERITIES = {"critical", "warning"}
# Series that Prometheus makes itself, not carbonhook.
PROMETHEUS_SERIES = {"up"}
# PromQL's words that look like names (functions are told apart by the parenthesis after them).
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset"}
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (never its functions, labels or ranges)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = {name for name, call in re.findall(r"(?<![\w:$])([a-zA-Z_:][\w:]*)(\s*\()?", expr) if not call}
    return names - PROMQL_WORDS


def _label_names(expr: str) -> dict[str, set[str]]:
    """The label names each selector in `expr` matches on, by series name."""
    found: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(expr):
        found.setdefault(name, set()).update(MATCHER.findall(matchers))
    return found


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those in collapsed rows too."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]


def _heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-"))
    return anchors



@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """What `/metrics` of a real `carbonhook run` answers after real work against the emulator:
    one capture made and one held over the day's limit."""
    from carbonhook.cli.lifecycle import start_server
    from carbonhook.emulator import create_emulator_app
    from tests.support import (
        CP_KEY,
        IMPACT_KEY,
        SECRET,
        Proc,
        free_port,
        make_body,
        query,
        signed,
        wait_http,
        wait_until,
    )

    tmp = tmp_path_factory.mktemp("live-metrics")
    rules = tmp / "rules.toml"
    rules.write_text(
        '[limits]\nmax_lbs_per_day = 600\n[[rule]]\nname = "flat"\non = "crp.generated"\n'
        "capture_lbs = 500\n"
    )
    emulator = start_server(create_emulator_app(), "127.0.0.1", 0)
    emulator_base = f"http://127.0.0.1:{emulator.port}"
    db = f"sqlite:///{tmp}/carbonhook.db"
    port = free_port()
    env = {
        "CARBONHOOK_DATABASE_URL": db,
        "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
        "CARBONHOOK_CARBONPASS_API_URL": f"{emulator_base}/api/v1",
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_IMPACT_API_URL": emulator_base,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        "CARBONHOOK_RULES_FILE": str(rules),
        "CARBONHOOK_LOG_FORMAT": "json",
    }
    service = Proc(["run", "--port", str(port)], env, tmp / "run.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", service)
        for subject in ("crp_metrics1", "crp_metrics2"):
            body = make_body(subject=subject)
            answer = httpx.post(f"{base}/webhooks/carbonpass", content=body, headers=signed(body))
            assert answer.status_code == 202, answer.text
        wait_until(
            lambda: sorted(query(db, "SELECT status FROM events")) == [("held",), ("succeeded",)],
            timeout=30,
            what=f"one event captured and one held\n{service.output()}",
        )
        scraped = httpx.get(f"{base}/metrics", timeout=10)
        assert scraped.status_code == 200, scraped.text
        yield scraped.text
    finally:
        service.stop()
        emulator.stop()


def _served(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """The series names a scrape serves (those of families with no sample yet included) and,
    for each series with samples, its label names."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
    }
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    return names, labels


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        _tool_missing("promtool (Debian's prometheus package) is not installed")
    assert path is not None
    return path


def test_every_alert_has_a_summary_a_severity_and_a_runbook_section() -> None:
    alerts = _alerts()
    assert len(alerts) >= 15
    anchors = _heading_anchors(README.read_text())
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "README.md" and anchor in anchors, f"{name}: no README section #{anchor}"


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    reads = {name: _metric_names(rule["expr"]) for name, rule in _alerts().items()}
    for metric in (
        "carbonhook_ledger_oldest_timestamp_seconds",  # held captures waiting
        "carbonhook_events",  # failed events
        "carbonhook_ledger_captures",  # unknown captures
        "carbonhook_duplicates_reversed_total",
        "carbonhook_audit_discrepancies",
        "carbonhook_sweeper_reenqueued_total",
        "carbonhook_last_delivery_timestamp_seconds",
        "up",
        "carbonhook_spend_limit_lbs",
        "carbonhook_api_requests_total",
    ):
        assert any(metric in names for names in reads.values()), metric
    down = [rule["expr"] for rule in _alerts().values() if "up" in _metric_names(rule["expr"])]
    assert any("carbonhook-receiver" in expr for expr in down)
    assert any("carbonhook-worker" in expr for expr in down)


def test_the_rules_tests_fire_every_alert() -> None:
    document = yaml.safe_load(ALERTS_TEST.read_text())
    assert document["rule_files"] == [ALERTS.name]
    fired = {
        case["alertname"]
        for group in document["tests"]
        for case in group["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == set(_alerts())


def test_the_metric_name_reader_sees_series_not_functions_labels_or_ranges() -> None:
    expr = (
        'sum by (api) (rate(carbonhook_api_requests_total{status!~"2.."}[5m])) / on (api) '
        "max(up offset 1h) > scalar(carbonhook:threshold) or absent(carbonhok_typo)"
    )
    assert _metric_names(expr) == {
        "carbonhook_api_requests_total",
        "up",
        "carbonhook:threshold",
        "carbonhok_typo",
    }
    assert _label_names(expr) == {"carbonhook_api_requests_total": {"status"}}


def test_promtool_accepts_the_alert_rules() -> None:
    result = _run([_promtool(), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fires_each_alert_in_the_rules_tests() -> None:
    result = _run([_promtool(), "test", "rules", str(ALERTS_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_accepts_a_live_metrics_scrape(live_metrics: str) -> None:
    result = _run([_promtool(), "check", "metrics"], input=live_metrics)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_alerts_and_their_tests_read_only_series_carbonhook_serves(live_metrics: str) -> None:
    served, labels = _served(live_metrics)
    known = served | PROMETHEUS_SERIES | _recorded()
    for name, rule in _alerts().items():
        assert _metric_names(rule["expr"]) <= known, name
        for metric, used in _label_names(rule["expr"]).items():
            if metric in labels:
                assert used <= labels[metric], f"{name}: {metric} has no label {used - labels[metric]}"
    document = yaml.safe_load(ALERTS_TEST.read_text())
    for group in document["tests"]:
        for series in group["input_series"]:
            metric = series["series"].split("{")[0]
            assert metric in known, f"{group['name']}: {metric}"
            used = set(_label_names(series["series"]).get(metric, set())) - {"job", "instance"}
            if metric in labels:
                assert used <= labels[metric], f"{group['name']}: {metric} has no label {used}"


def test_the_dashboard_is_a_grafana_dashboard_over_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_no_two_dashboard_panels_cover_the_same_cells() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(json.loads(DASHBOARD.read_text())):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} over {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_reads_only_series_carbonhook_serves(live_metrics: str) -> None:
    served, labels = _served(live_metrics)
    read: set[str] = set()
    for expr in _dashboard_exprs():
        names = _metric_names(expr)
        assert names <= served | PROMETHEUS_SERIES, f"{expr}: {names - served}"
        read |= names
        for metric, used in _label_names(expr).items():
            if metric in labels:
                assert used <= labels[metric], f"{expr}: {metric} has no label {used}"
    carbonhook_series = {
        name
        for name in served
        if name.startswith("carbonhook_") and not name.endswith(("_created", "_sum", "_count"))
    }
    assert carbonhook_series - read == set(), "every carbonhook series is on the dashboard"


def test_promtool_accepts_the_dashboards_queries(tmp_path: Path) -> None:
    """Each query as a recording rule (Grafana's $__rate_interval as 5m): promtool parses it."""
    rules = [
        {"record": f"carbonhook:dashboard_query_{index}", "expr": expr.replace("$__rate_interval", "5m")}
        for index, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([_promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
