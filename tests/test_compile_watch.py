"""core.compile_watch: the counts that tell a compiled run from one Dynamo silently ran eagerly (issue 65)."""

from __future__ import annotations

import torch
import torch._dynamo

from poisonbench.core.compile_watch import RECOMPILE_LIMIT, CompileWatch, raise_recompile_limit
from poisonbench.core.device import compile_static


def test_a_fallback_at_the_recompile_limit_is_counted_and_named():
    watch = CompileWatch()
    try:
        with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=False):
            before = watch.snapshot()

            def doubled_sum(x):
                return (x * 2).sum()

            f = torch.compile(doubled_sum, dynamic=False, backend="eager")
            for n in range(1, 5):  # a new static shape each call: graphs 1 and 2, then the limit
                assert f(torch.ones(n)) == 2 * n
            counts = watch.since(before)
        assert counts["graphs"] == 2, counts
        assert counts["recompile_limit_hits"] == 1, counts
        if watch.fallbacks:  # Dynamo's warning, where the test process's logging lets it reach the watch
            assert "doubled_sum" in watch.fallbacks[0] and "recompile_limit (2)" in watch.fallbacks[0]
    finally:
        watch.close()
        torch._dynamo.reset()


def test_the_engine_raises_the_limit_and_never_lowers_it():
    with torch._dynamo.config.patch(recompile_limit=8):
        compile_static(lambda x: x + 1)
        assert torch._dynamo.config.recompile_limit == RECOMPILE_LIMIT
    with torch._dynamo.config.patch(recompile_limit=500):
        raise_recompile_limit()
        assert torch._dynamo.config.recompile_limit == 500
