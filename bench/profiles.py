"""py-spy samples of a running process, folded into the few lines a person reads first."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(__import__("sys").executable).with_name("py-spy")
    return str(beside) if beside.exists() else None


def start_recording(pid: int, seconds: float, raw: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` (and its children) for `seconds` without pausing it; folded stacks to `raw`."""
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize(raw: Path, top: int = 30) -> str:
    """Inclusive and self shares of the sampled functions (idle threads are not sampled)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(frame) for frame in stack.split(";") if frame]
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top // 2)]
    return "\n".join(lines) + "\n"


def _name(frame: str) -> str:
    found = _FRAME.match(frame)
    if found is None:
        return frame
    path = found.group("file").split("site-packages/")[-1]
    path = re.sub(r"^.*?/(receiver|workers|carbonhook|bench)/", r"\1/", path)
    return f"{found.group('func')} ({path})"
