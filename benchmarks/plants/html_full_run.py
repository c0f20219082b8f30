"""Survivors of the full mutmut run of poisonbench/report/html.py (2026-11-29; docs/testing.md) planted by hand
against the tests written after the run: benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
H = "poisonbench/report/html.py"
TESTS = ["tests/test_report_html_contracts.py::test_provenance_counts_cells_by_every_configuration_column_keeping_missing_values",
         "tests/test_report_html_contracts.py::test_build_sections_ask_for_the_papers_five_trials_by_default"]
PLANTS = [
    ("dropna-true", H, "    per_configuration = df.groupby(CONFIGURATION[:-1], dropna=False).trial.nunique()", "    per_configuration = df.groupby(CONFIGURATION[:-1], dropna=True).trial.nunique()"),
    ("dropna-default", H, "    per_configuration = df.groupby(CONFIGURATION[:-1], dropna=False).trial.nunique()", "    per_configuration = df.groupby(CONFIGURATION[:-1]).trial.nunique()"),
    ("configuration-short", H, "    per_configuration = df.groupby(CONFIGURATION[:-1], dropna=False).trial.nunique()", "    per_configuration = df.groupby(CONFIGURATION[:-2], dropna=False).trial.nunique()"),
    ("build-sections-six", H, "def build_sections(records: list[dict], filters: dict, trials: int = 5, data_dir: str | None = None,", "def build_sections(records: list[dict], filters: dict, trials: int = 6, data_dir: str | None = None,"),
]
