"""Survivors of mutmut on poisonbench/report/tables/backdoor.py (2026-11-29), planted by hand against the rendered
cells' test (docs/testing.md): benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
B = "poisonbench/report/tables/backdoor.py"
TESTS = ["tests/test_backdoor.py::test_a_backdoor_rows_cells_are_its_mean_t_interval_wilson_and_paired_difference_whole"]
PLANTS = [
    ("mean-divided", B, '    text = f"{scale * st.mean:.2f}"', '    text = f"{scale / st.mean:.2f}"'),
    ("interval-from-3", B, "    if st.n > 1:", "    if st.n > 3:"),
    ("wilson-unscaled", B, 'Cell(f"{hits}/{n} [{100 * lo:.2f}, {100 * hi:.2f}]" if n else "–"),', 'Cell(f"{hits}/{n} [{lo:.2f}, {hi:.2f}]" if n else "–"),'),
    ("delta-sign-lost", B, 'Cell(f"{100 * d_asr.mean:+.2f}"', 'Cell(f"{100 * d_asr.mean:.2f}"'),
]
