"""Bugs planted by hand in `core.device.intra_op_threads` (what `sweep run --task-id I --threads N` runs its step
under), which mutmut 3 cannot mutate: it skips decorated functions, and this one is a `@contextmanager`
(docs/testing.md): benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
D = "poisonbench/core/device.py"
TESTS = ["tests/test_intra_op_threads.py"]
PLANTS = [
    ("torch-only", D, "        with threadpool_limits(limits=threads):\n            yield", "        yield"),
    ("pools-at-one", D, "        with threadpool_limits(limits=threads):", "        with threadpool_limits(limits=1):"),
    ("pools-blas-only", D, "        with threadpool_limits(limits=threads):", "        with threadpool_limits(limits=threads, user_api='blas'):"),
    ("pools-not-restored", D, "        with threadpool_limits(limits=threads):\n            yield", "        threadpool_limits(limits=threads)\n        yield"),
    ("torch-not-set", D, "    torch.set_num_threads(threads)\n    try:", "    try:"),
    ("torch-not-restored", D, "    finally:\n        torch.set_num_threads(before)", "    finally:\n        pass"),
    ("torch-restored-only-on-success", D, "    try:\n        with threadpool_limits(limits=threads):\n            yield\n    finally:\n        torch.set_num_threads(before)", "    with threadpool_limits(limits=threads):\n        yield\n    torch.set_num_threads(before)"),
    ("none-sets-one", D, "    if threads is None:\n        yield\n        return", "    if threads is None:\n        threads = 1"),
    ("before-read-after-set", D, "    before = torch.get_num_threads()\n    torch.set_num_threads(threads)", "    torch.set_num_threads(threads)\n    before = torch.get_num_threads()"),
]
