"""The memory a new allocation can take on this machine: what the bounded readers (core.bounded, data.npz) check
a file's decoded size against before they decode it."""

from __future__ import annotations


def _first_int(path: str, key: str | None = None, scale: int = 1) -> int | None:
    """The integer of file `path` (its first word, or the first word after `key` on the line starting with it)."""
    try:
        with open(path) as f:
            for line in f:
                if key is None:
                    word = line.split()[0]
                    return None if word == "max" else int(word) * scale
                if line.startswith(key):
                    return int(line.split()[1]) * scale
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can take, None where unknown: the least of Linux's MemAvailable, what
    this process's cgroup (a container, a SLURM job) has left under its limit, and what its address-space limit
    (RLIMIT_AS, `ulimit -v`) leaves. MemAvailable alone is the host's: a container is killed far below it."""
    import resource

    bounds = [_first_int("/proc/meminfo", "MemAvailable:", 1024)]
    group = "/sys/fs/cgroup"  # cgroup v2: this process's cgroup (/proc/self/cgroup: "0::/its/path")
    try:
        with open("/proc/self/cgroup") as f:
            group += next((line.strip()[3:] for line in f if line.startswith("0::")), "")
    except OSError:
        pass
    limit = _first_int(f"{group.rstrip('/')}/memory.max")
    if limit is not None:
        bounds.append(limit - (_first_int(f"{group.rstrip('/')}/memory.current") or 0))
    limit = _first_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
    if limit is not None and limit < 1 << 60:
        bounds.append(limit - (_first_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        bounds.append(soft - (_first_int("/proc/self/status", "VmSize:", 1024) or 0))
    known = [max(b, 0) for b in bounds if b is not None]
    return min(known) if known else None
