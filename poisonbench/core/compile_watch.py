"""What `torch.compile` actually did: graphs compiled, graph breaks, and eager fallbacks at Dynamo's recompile limit.

Why: Dynamo keeps at most `torch._dynamo.config.recompile_limit` graphs per code object (8 by default) and, past it,
runs that code eagerly with one log warning, while the caller still believes it compiled. One process of ours
compiles `Classifier.forward` once per model variant it meets (scratch, frozen extractor, eval copies, defenses'
extra forwards, precisions), so a long process came within one graph of the limit (issue 65).
`raise_recompile_limit` gives the engine room (`RECOMPILE_LIMIT`), and `CompileWatch` counts what happened, so that
benchmarks/gpu_check.py can fail loudly on a fallback instead of timing eager code as compiled.
"""

from __future__ import annotations

import logging

RECOMPILE_LIMIT = 64  # graphs per code object: one per model variant × precision × batch shape this process meets
LIMIT_MESSAGE = "torch._dynamo hit config."  # the start of Dynamo's warning when a code object falls back to eager
# the start of the `unimplemented` reason Dynamo counts for the same event (torch 2.9+; older: "cache_size_limit")
LIMIT_REASONS = ("Dynamo recompile limit exceeded", "cache_size_limit reached")


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Let Dynamo keep up to `limit` graphs per code object (never lowers a limit set higher)."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), limit))


class _LimitHits(logging.Handler):
    """Counts Dynamo's "hit config.recompile_limit" warnings (each one: a code object now runs eagerly)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(LIMIT_MESSAGE):
            self.hits.append(message.splitlines()[0] + " " + " ".join(
                line.strip() for line in message.splitlines()[1:3]))


class CompileWatch:
    """Counts torch.compile's work from its creation on: `snapshot()` is the running total, `since(a)` the part of
    it after snapshot `a` (a figure's own compiles)."""

    def __init__(self) -> None:
        self._handler = _LimitHits()
        logging.getLogger("torch._dynamo").addHandler(self._handler)

    def snapshot(self) -> dict:
        from torch._dynamo.utils import counters

        counted = sum(n for reason, n in counters["unimplemented"].items() if reason.startswith(LIMIT_REASONS))
        return {"graphs": int(counters["stats"]["unique_graphs"]),
                "frames_compiled": int(counters["frames"]["ok"]),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                # Dynamo's own counter, or its warnings where a logging set-up elsewhere kept them from us
                "recompile_limit_hits": max(int(counted), len(self._handler.hits))}

    def since(self, before: dict) -> dict:
        now = self.snapshot()
        return {k: now[k] - before.get(k, 0) for k in now}

    @property
    def fallbacks(self) -> list[str]:
        """Dynamo's own words for each eager fallback at the recompile limit, in order."""
        return list(self._handler.hits)

    def close(self) -> None:
        logging.getLogger("torch._dynamo").removeHandler(self._handler)
