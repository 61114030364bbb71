"""constraints.txt pins what the suite runs on: what `make`, CI and the Docker image install."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert match, f"constraints.txt: not a `name==version` pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = match[2]
    return found


def installed_closure() -> dict[str, str]:
    """Every distribution carbonhook[dev] needs here, directly or not, with its installed version
    (tools installed beside it are not its business)."""
    versions: dict[str, str] = {}
    todo = [("carbonhook", frozenset({"dev"}))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = metadata.distribution(name)
        versions[canonicalize_name(name)] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            wanted = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in wanted):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    versions.pop("carbonhook")
    return versions


def test_every_package_carbonhook_needs_is_installed_at_the_pinned_version():
    pinned = pins()
    installed = installed_closure()
    assert {"sqlalchemy", "dramatiq", "httpx", "pytest"} <= set(installed)  # the walk went deep
    unpinned = sorted(set(installed) - set(pinned))
    assert not unpinned, f"needed but not in constraints.txt (run `make lock`): {unpinned}"
    differ = {name: (version, pinned[name]) for name, version in installed.items() if version != pinned[name]}
    assert not differ, f"installed version != pinned one (installed, pinned): {differ}"


def test_the_pins_satisfy_what_pyproject_asks_for():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} (pyproject.toml) is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is not {requirement.specifier}"
