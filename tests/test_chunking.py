"""chunking: CPU chunks split a batch equally and stay under the activation budget without touching BatchNorm
statistics; off the CPU a batch is one chunk."""

from __future__ import annotations

import torch

from poisonbench.data import load_dataset
from poisonbench.engine.chunking import CPU_ACTIVATION_BYTES, chunk_rows, largest_activation_bytes
from poisonbench.engine.models import build_model


def test_cpu_chunks_split_the_batch_equally_under_the_activation_budget():
    data = load_dataset("mnist-5k")
    model = build_model("convnet", data, seed=0).train()
    running = model.conv[1].running_mean.clone()
    x = data.train.x[:1].float() / 255
    per_row = largest_activation_bytes(model, x)
    assert per_row == 40 * 24 * 24 * 4  # the stem's output: Conv 1→40 k5 on 28×28, float32
    assert model.training and torch.equal(model.conv[1].running_mean, running)  # probed in eval mode
    for rows in (1, 100, 250, 1000, 1024, 4097):
        chunk = chunk_rows(model, x, rows)
        pieces = -(-rows // chunk)
        assert chunk * per_row <= CPU_ACTIVATION_BYTES or chunk == 1
        assert pieces * chunk - rows < pieces  # equal pieces: padding is under one row per piece
    assert chunk_rows(model, x, 1000) == 250


def test_off_the_cpu_the_whole_batch_is_one_chunk():
    data = load_dataset("mnist-5k")
    model = build_model("convnet", data, seed=0)
    elsewhere = torch.empty(1, 1, 28, 28, device="meta")  # not the CPU: no probe runs (it could not, on meta)
    assert chunk_rows(model, elsewhere, 1000) == 1000 and chunk_rows(model, elsewhere, 0) == 1
