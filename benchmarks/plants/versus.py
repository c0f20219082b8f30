"""Bugs planted by hand in `report table 3 --versus` (poisonbench/report/tables/builders.py, cli/report.py;
docs/testing.md, 2026-11-29): benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
B = "poisonbench/report/tables/builders.py"
C = "poisonbench/cli/report.py"
P = "poisonbench/report/tables/power.py"
TESTS = ["tests/test_table3_versus.py"]
PLANTS = [
    ("base-still-none", B, "                    base = of_kinds(chosen[base_key], kinds)", "                    base = of_kinds(chosen[\"none\"], kinds)"),
    ("own-row-paired", B, "            if paired and m != base_key and any(c.text != DASH for c in paired_row[2:]):", "            if paired and m != \"none\" and any(c.text != DASH for c in paired_row[2:]):"),
    ("label-not-matched", B, "        if wanted in (normal_row_name(m), normal_row_name(labels.get(m, method_label(m)))):", "        if wanted == normal_row_name(m):"),
    ("beta-not-normalised", B, '    return " ".join(name.replace("β", "beta").lower().split())', '    return " ".join(name.lower().split())'),
    ("case-sensitive", B, '    return " ".join(name.replace("β", "beta").lower().split())', '    return " ".join(name.replace("β", "beta").split())'),
    ("detectable-of-none", B, "            block.notes += detectable_notes(of_kinds(chosen[base_key], kinds), attacks,", "            block.notes += detectable_notes(of_kinds(chosen[\"none\"], kinds), attacks,"),
    ("no-error-when-missing", B, "    if opts.versus is not None and blocks and not found_versus:", "    if opts.versus is not None and not blocks:"),
    ("note-says-wo", B, '                         else f"no paired row: this setting has no {base_label} runs to pair with")', '                         else "no paired row: this setting has no W/o Defense runs to pair with")'),
    ("versus-needs-paired", B, "        paired = (opts.paired or opts.versus is not None) and base_key in has_runs", "        paired = opts.paired and base_key in has_runs"),
    ("paired-with-label", B, '"paired_with": ("W/o Defense" if base_key == "none" else base_label) if paired else None})', '"paired_with": base_key if paired else None})'),
    ("any-table", C, '    if table is None or missing or str(table).strip().upper() not in ("3", "III"):', '    if table is None or missing:'),
    ("power-baseline-name", P, '    head = f"detectable: with {n} targets and {baseline} at {k0}/{n} ({100 * k0 / n:.0f} %)"', '    head = f"detectable: with {n} targets and W/o Defense at {k0}/{n} ({100 * k0 / n:.0f} %)"'),
    # the 7 detectable_notes survivors of mutmut (2026-11-29), as mutmut's operators write them
    ("dn-default-name", B, 'def detectable_notes(baseline: pd.DataFrame, attacks: list[str], name: str = "W/o Defense") -> list[str]:', 'def detectable_notes(baseline: pd.DataFrame, attacks: list[str], name: str = "XXW/o DefenseXX") -> list[str]:'),
    ("dn-default-case", B, 'def detectable_notes(baseline: pd.DataFrame, attacks: list[str], name: str = "W/o Defense") -> list[str]:', 'def detectable_notes(baseline: pd.DataFrame, attacks: list[str], name: str = "w/o defense") -> list[str]:'),
    ("dn-filter-or", B, "        succ = [bool(x) for x in baseline[baseline.attack == a].success if x is not None and not pd.isna(x)]", "        succ = [bool(x) for x in baseline[baseline.attack == a].success if x is not None or not pd.isna(x)]"),
    ("dn-nan-kept", B, "        succ = [bool(x) for x in baseline[baseline.attack == a].success if x is not None and not pd.isna(x)]", "        succ = [bool(x) for x in baseline[baseline.attack == a].success if x is not None]"),
    ("dn-label-none", B, '            notes.append(f"{paper.ATTACK_LABEL.get(a, a)}: {detectable_note(len(succ), sum(succ), name)}")', '            notes.append(f"{paper.ATTACK_LABEL.get(a, None)}: {detectable_note(len(succ), sum(succ), name)}")'),
    ("dn-label-key", B, '            notes.append(f"{paper.ATTACK_LABEL.get(a, a)}: {detectable_note(len(succ), sum(succ), name)}")', '            notes.append(f"{paper.ATTACK_LABEL.get(None, a)}: {detectable_note(len(succ), sum(succ), name)}")'),
    ("dn-name-dropped", B, '            notes.append(f"{paper.ATTACK_LABEL.get(a, a)}: {detectable_note(len(succ), sum(succ), name)}")', '            notes.append(f"{paper.ATTACK_LABEL.get(a, a)}: {detectable_note(len(succ), sum(succ))}")'),
]
