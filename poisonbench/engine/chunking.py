"""How many rows a batched pass that is not an SGD step (evaluation, features, input gradients) takes at once.

Memory only, not numbers: every objective chunked this way is per example, so a chunk size changes speed alone.
On a GPU a whole batch runs at once (its caching allocator reuses memory); on the CPU the batch is split so that
no activation of a chunk crosses glibc's mmap threshold (below).
"""

from __future__ import annotations

import torch
from torch import nn

from .models import probe

# On the CPU, keep every activation of a chunk under this many bytes. glibc serves blocks above its mmap
# threshold (at most 32 MiB) with fresh mmaps, so each such tensor costs one page fault per 4 KiB on every
# allocation; below it, freed blocks are reused. Measured on the MNIST ConvNet stem (1→40 k5, one core): 159 ms
# per 1,000 rows at batch 1,000 (45k page faults per call) vs 42 ms at batch 250 (none).
CPU_ACTIVATION_BYTES = 24 * 2**20


def largest_activation_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes per row of the largest output of any leaf module of `model` on one row of `sample` (probed in eval
    mode, so BatchNorm statistics are untouched; the mode is restored)."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: probe the eager module (no recompile)
    sizes = [sample[:1].numel() * sample.element_size()]
    probe(model, sample, [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size()))
                          for m in model.modules() if not list(m.children())])
    return max(sizes)


def chunk_rows(model: nn.Module, sample: torch.Tensor, rows: int) -> int:
    """Rows per chunk for processing a batch of `rows` on `sample`'s device: all of them on a GPU (its caching
    allocator reuses memory); on the CPU, an equal split of the batch whose largest activation stays under
    `CPU_ACTIVATION_BYTES`. Chunking changes only speed: every objective chunked this way is per example."""
    if sample.device.type != "cpu" or rows <= 1:
        return max(rows, 1)
    most = max(1, CPU_ACTIVATION_BYTES // largest_activation_bytes(model, sample))
    pieces = -(-rows // most)
    return -(-rows // pieces)
