"""Bugs planted by hand in `report table backdoor`'s budget rows (poisonbench/report/tables/backdoor.py;
docs/testing.md, 2026-11-29): benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
B = "poisonbench/report/tables/backdoor.py"
TESTS = ["tests/test_backdoor.py::test_the_backdoor_table_gives_a_defense_at_another_beta_or_step_a_row_of_its_own_paired_by_trial",
         "tests/test_backdoor.py::test_the_backdoor_table_pairs_each_defense_with_none_by_trial"]
PLANTS = [
    ("no-budget-rows", B, '            every = choose_parameters(rows, notes, budgets=True, see=f"backdoor {attack}; see plain `report`")', '            every = choose_parameters(rows, notes, see=f"backdoor {attack}; see plain `report`")'),
    ("see-dropped", B, '            every = choose_parameters(rows, notes, budgets=True, see=f"backdoor {attack}; see plain `report`")', '            every = choose_parameters(rows, notes, budgets=True)'),
    ("rows-unordered", B, "            methods = with_budget_rows(row_methods(set(rows.method)), every)", "            methods = sorted(every)"),
    ("plain-labels", B, "                label = labels.get(m, method_label(m))", "                label = method_label(m)"),
    ("no-beta-note", B, "            if labels:\n                notes.append(BUDGET_NOTE)", "            if not labels:\n                notes.append(BUDGET_NOTE)"),
    ("method-is-key", B, '"attack": attack, "method": method,', '"attack": attack, "method": m,'),
    ("beta-of-key-only", B, '"row": label, "beta": beta if beta is not None else row_budget(chosen),', '"row": label, "beta": beta,'),
    ("paired-with-hint", B, '                d_asr = paired(chosen, base, "asr") if m != "none" and len(base) else None', '                d_asr = paired(chosen, every.get("hint", base), "asr") if m != "none" and len(base) else None'),
]
