"""The kernel OOM killer's counter of this process's memory cgroup, on cgroup v1, v2 and
hybrid layouts (a SIGKILL while it rose was the OOM killer, not a crash)."""

from __future__ import annotations

from pathlib import Path


def oom_kills(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The kernel OOM killer's count for this process's memory cgroup (children inherit it).

    cgroup v2 (a ``0::/path`` line): ``oom_kill`` in ``<root>/<path>/memory.events``; cgroup v1
    or a hybrid layout (a ``N:...memory...:/path`` line): ``oom_kill`` in
    ``<root>/memory/<path>/memory.oom_control``. The sum over the hierarchies found; None when
    neither can be read (then a SIGKILL is reported ``crashed``, never guessed ``oom``).
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    counts = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.lstrip("/")
        if controllers == "":
            counts.append(counter(Path(root, rel, "memory.events"), "oom_kill"))
        elif "memory" in controllers.split(","):
            counts.append(counter(Path(root, "memory", rel, "memory.oom_control"), "oom_kill"))
    found = [c for c in counts if c is not None]
    return sum(found) if found else None


def counter(path: Path, key: str) -> int | None:
    """The integer after ``key`` in a ``key value`` per line file (None if unreadable)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None
