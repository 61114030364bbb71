"""constraints.txt pins what the suite runs on: what `make`, CI and the Docker image install."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

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


def test_every_installed_package_is_the_pinned_version():
    pinned = pins()
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    installed.pop("carbonhook")
    # pip, setuptools and wheel belong to the environment, not to carbonhook.
    for tool in ("pip", "setuptools", "wheel"):
        installed.pop(tool, None)
    unpinned = sorted(set(installed) - set(pinned))
    assert not unpinned, f"installed but not in constraints.txt (run `make lock`): {unpinned}"
    differ = {name: (installed[name], pinned[name]) for name in installed if installed[name] != pinned[name]}
    assert not differ, f"installed version != pinned one (installed, pinned): {differ}"


def test_the_pins_satisfy_what_pyproject_asks_for():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} (pyproject.toml) is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is not {requirement.specifier}"
