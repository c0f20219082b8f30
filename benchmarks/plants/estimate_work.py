"""Bugs planted by hand in poisonbench/sweeps/estimate.py where the mutmut run of 2026-11-29 (commit 5776b92's tree)
ran before the test that pins them changed (docs/testing.md): benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
E = "poisonbench/sweeps/estimate.py"
TESTS = ["tests/test_estimate_work_contracts.py"]
PLANTS = [
    ("round-none", E, "            out[workload] = round(rows / seconds, 1)", "            out[workload] = round(rows / seconds, None)"),
    ("round-default", E, "            out[workload] = round(rows / seconds, 1)", "            out[workload] = round(rows / seconds)"),
    ("round-2", E, "            out[workload] = round(rows / seconds, 1)", "            out[workload] = round(rows / seconds, 2)"),
]
