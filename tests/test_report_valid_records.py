"""Issue 82, failure class 2: every report command (tables II–V and the matrix, the figures, the HTML page, the plain
report, `missing`) renders any set of records that passes the record check, or says in one line what is missing;
the record check (experiment/record_schema.py) and the reports agree on one schema, types included; text from a
record is never interpreted by matplotlib's mathtext.

Per field (docs/metrics.md, "Untrusted records"): a field that places a run in a cell or that a table computes with
is checked, and a record whose field has another type is skipped and named; the payloads only a figure draws
(`metrics.sample_predictions`, `defense.examples`, `defense.noise`, `metrics.target_prediction` / `target_probs`)
are tolerated: a malformed one is drawn as absent, with a warning naming the run."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import matplotlib.figure
import matplotlib.text
import pytest

from poisonbench.core.hashing import short_hash
from poisonbench.experiment.record_schema import record_problem
from poisonbench.experiment.records import missing_fields
from poisonbench.report import html, tables
from poisonbench.report.aggregate import load_summary, render
from tests.report_records import healthy_noise_examples, hint_params, make_record, sample_predictions, write_records


def rehashed(record: dict) -> dict:
    """`record` under the run id of its (edited) config, as `defend` would have written it."""
    record["run_id"] = short_hash(record["config"])
    return record


@pytest.fixture
def no_images(monkeypatch):
    """Figures 2–4 draw placeholders rather than load a dataset."""
    from poisonbench.report.figures import panels

    monkeypatch.setattr(panels, "split_test_images", lambda *args: None)


def targeted(attack: str, trial: int, method: str = "none", **kw) -> dict:
    return make_record(dataset="cifar10", family="cifar10", recipe="paper", method=method, trial=trial,
                       targeted={"attack": attack, "target_index": 3 + trial, "target_class": 5,
                                 "intended_class": 1, "success": trial == 0}, **kw)


def single_attack(record: dict, attack: str = "pgd") -> dict:
    record["config"]["poison"].update(attacks=[attack], poison_ids={attack: "abc"}, label=f"{attack}@x")
    return rehashed(record)


def every_kind() -> list[dict]:
    """Records of every kind a report reads: clean and the paper's mix (sample predictions), HINT at ρ = 0.6 (Tables
    IV, V) with healthy-noise examples (two runs: Fig. 1 has another to draw when one's are malformed), a single
    attack at ρ = 1.0 (the matrix), targeted MP and BP (Table III, Figs. 3–4, one with `inputs`), a filter's removal
    counts and DP-SGD's privacy accounting."""
    recs = [make_record(rho=rho, trial=t, acc=0.9 - 0.01 * t, sample=sample_predictions(t))
            for rho in (0.0, 0.6) for t in range(2)]
    recs += [make_record(method="hint", params=hint_params(), rho=0.6, trial=t, acc=0.92, defense_seconds=2.0,
                         sample=sample_predictions(1), examples=healthy_noise_examples())
             for t in range(2)]
    recs += [single_attack(make_record(rho=1.0, trial=t, acc=0.5)) for t in range(2)]
    recs += [targeted(attack, t) for attack in ("mp", "bp") for t in range(2)]
    recs[-1]["inputs"] = {"poisons": [{"attack": "bp", "poison_id": "p1", "tensors_sha256": "ab" * 32,
                                       "schedule": "official", "objective": "mean"}]}
    removal = make_record(method="spectral", rho=0.6, trial=0, acc=0.91)
    removal["defense"] = {"removal": {"clean": 3840, "clean_removed": 116, "poisons": 160, "poisons_removed": 1,
                                      "kept": 3883, "removed": 117, "rows": 4000}}
    dp = make_record(method="dpsgd", params={"clip": 1.0, "noise_multiplier": 1.1, "sampling": "poisson"}, rho=0.6,
                     trial=0, acc=0.8)
    dp["defense"] = {"accounting": {"delta": 1e-5, "delta_rule": "1/n", "epsilon": 2.5, "guarantee": True,
                                    "noise_multiplier": 1.1, "sample_rate": 0.01, "sampling": "poisson",
                                    "steps": 100, "epsilon_note": "x"}}
    recs += [removal, dp]
    for r in recs:
        r["env"] = {"device": "cpu", "cpu": "x86", "code": "c0de"}
    return [rehashed(r) for r in recs]


def table_texts(records: list[dict]) -> None:
    """Every table (II–V, matrix) in every format, the plain report in every format, Table II's `missing`: what
    each report command computes (the figures apart)."""
    from rich.console import Console

    for number in (*tables.TABLES, tables.MATRIX):
        mix = "any" if number == tables.MATRIX else tables.PAPER_MIX
        table = tables.build(number, records, tables.Options(paper=True, diff=True, ci=True, paired=True), mix=mix)
        for fmt in ("md", "latex", "csv", "json"):
            tables.render(table, fmt)
        tables.render_rich(table, Console(file=io.StringIO(), width=200))
    summary = load_summary(records, mix="any", poison_sets=None)
    if len(summary):
        for fmt in ("md", "latex", "csv", "json"):
            render(summary, fmt)
    for number in ("2", "4", "5"):
        tables.missing_commands(number, records, tables.Options())


# ------------------------------------------------------------------------------------- a workspace of one kind

REPORTS = [("table", "2"), ("table", "3"), ("table", "4"), ("table", "5"), ("table", "matrix"), ("figure", "1"),
           ("figure", "2"), ("figure", "3"), ("figure", "4"), ("figure", "rho"), ("missing", "2")]


def run_every_report(cli, results: Path, out: Path) -> dict[str, tuple[int, str, str]]:
    """Each report command on `results`: {name: (exit code, stdout, stderr)}."""
    done = {}
    for kind, number in REPORTS:
        args = ["report", kind, number, "--results", results]
        args += ["--out", out] if kind == "figure" or number == "matrix" else []
        done[f"{kind} {number}"] = cli(*args)
    done["plain"] = cli("report", "--results", results)
    page = out / "page.html"
    page.unlink(missing_ok=True)
    done["html"] = cli("report", "html", page, "--results", results)
    return done


def test_a_workspace_of_single_attack_runs_only_renders_every_report(cli, tmp_path, no_images):
    """Issue 82: untargeted single-attack runs alone ended `report html` and `report figure 2` in a KeyError (an
    empty selection indexed with an empty list lost its columns). Every command now exits 0; the HTML page is
    written; a figure or table the runs cannot fill says so in one line, naming what it needs."""
    records = [single_attack(make_record(method=m, rho=0.4, trial=t, sample=sample_predictions(0)))
               for m in ("none", "hint") for t in range(2)]
    res = write_records(tmp_path / "res", records)
    done = run_every_report(cli, res, tmp_path / "out")
    for name, (code, _, err) in done.items():
        assert code == 0 and "Traceback" not in err, (name, err)
    assert (tmp_path / "out" / "page.html").is_file()
    fig2 = [line for line in done["figure 2"][2].splitlines() if line.startswith("Figure 2:")]
    assert fig2 == ["Figure 2: nothing to draw from the records matching (no filters); it needs clean runs or "
                    "untargeted runs of the attack mix (--attacks; default the paper's four) with "
                    "metrics.sample_predictions"]
    assert done["figure 2"][1] == ""
    table2 = [line for line in done["table 2"][2].splitlines() if line.startswith("Table II:")]
    assert table2 == ["Table II: no records match (no filters); it needs clean runs or untargeted runs of the attack "
                      "mix (--attacks; default the paper's four)"]
    matrix = [line for line in done["table matrix"][2].splitlines() if line.startswith("Defense × attack matrix:")]
    assert matrix == ["Defense × attack matrix: no records match (mix=any); it needs clean runs, untargeted runs of "
                      "one attack alone at ρ = --poison-ratio (default 1.0), or targeted runs"]
    code, out, err = cli("report", "figure", "2", "--attacks", "pgd", "--results", res, "--out", tmp_path / "o2")
    assert code == 0 and out.strip().endswith(".png"), err  # the runs of that mix are drawn


@pytest.mark.parametrize("kind", ["clean", "targeted", "hint-examples"])
def test_a_workspace_of_any_one_kind_renders_every_report(cli, tmp_path, no_images, kind):
    records = {"clean": lambda: [make_record(trial=t, sample=sample_predictions(t)) for t in range(2)],
               "targeted": lambda: [targeted("bp", t) for t in range(2)],
               "hint-examples": lambda: [make_record(method="hint", params=hint_params(), rho=0.6,
                                                     examples=healthy_noise_examples())]}[kind]()
    done = run_every_report(cli, write_records(tmp_path / "res", records), tmp_path / "out")
    for name, (code, _, err) in done.items():
        assert code == 0 and "Traceback" not in err, (name, err)
    assert (tmp_path / "out" / "page.html").is_file()


# ------------------------------------------------------------------------------------------------ mathtext

MATH = ["$\\nope{$", "$x^$", "a $\\alpha$ b"]  # two that mathtext cannot parse, one it would turn into α


def mathtext_records() -> list[dict]:
    recs = []
    for i, text in enumerate(MATH):
        recs += [make_record(method=text, rho=rho, trial=t, sample=sample_predictions(t))
                 for rho in (0.0, 0.6) for t in range(2)]
        recs += [single_attack(make_record(method=text, rho=1.0, trial=t), attack=text) for t in range(2)]
        recs += [targeted(attack, t, method=text) for attack in ("mp", "bp") for t in range(2)]
        recs += [make_record(dataset=text, method="hint", params=hint_params(), rho=0.6, trial=i,
                             examples=healthy_noise_examples())]
    return [rehashed(r) for r in recs]


def test_mathtext_in_a_record_never_reaches_the_figures(cli, tmp_path, no_images):
    """A method, attack or dataset holding `$…$` killed `report table matrix`, the figures and the HTML page in
    matplotlib's mathtext parser (ValueError). Every command now exits 0."""
    res = write_records(tmp_path / "res", mathtext_records())
    done = run_every_report(cli, res, tmp_path / "out")
    for name, (code, _, err) in done.items():
        assert code == 0 and "Traceback" not in err, (name, err)
    assert len(list((tmp_path / "out").glob("*.png"))) >= 6
    assert (tmp_path / "out" / "page.html").is_file()


@pytest.fixture
def drawn_texts(monkeypatch):
    """Every text of every figure saved, once drawn: (its string, whether matplotlib would parse it as math)."""
    seen: list[tuple[str, bool]] = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        result = real(fig, *args, **kwargs)
        seen.extend((t.get_text(), t.get_parse_math()) for t in fig.findobj(matplotlib.text.Text))
        return result

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return seen


@pytest.mark.parametrize("figure", ["1", "2", "3", "rho", "matrix"])
def test_a_method_named_in_mathtext_is_drawn_literally(tmp_path, no_images, drawn_texts, figure):
    """The label of a method called `$\\alpha$` is the literal `$\\alpha$` (no α): matplotlib is told not to parse
    any text of the figure as math, and the text keeps both `$`."""
    from poisonbench.report import figures
    from poisonbench.report.figures.matrix import figure_matrix

    name = "$\\alpha$"
    recs = [r for r in mathtext_records() if r["config"]["defense"]["method"] == "a $\\alpha$ b"
            or r["config"]["dataset"] == "a $\\alpha$ b"]
    for r in recs:
        if r["config"]["defense"]["method"] == "a $\\alpha$ b":
            r["config"]["defense"]["method"] = name
        else:  # Fig. 1 draws no dataset or method, but the defense's parameters (γ, r) in its title
            r["config"]["dataset"] = name
            r["config"]["defense"]["gamma"] = name
    if figure == "matrix":
        figure_matrix(tables.build("matrix", recs, tables.Options(), mix="any"), tmp_path)
    else:
        assert figures.draw(figure, recs, tmp_path)
    literal = [text for text, _ in drawn_texts if name in text]
    assert literal, drawn_texts  # the label is drawn, `$` and all
    assert {parse for text, parse in drawn_texts if "$" in text} == {False}


def test_matplotlib_keeps_parsing_math_outside_the_report_figures(tmp_path, no_images):
    """The figures turn mathtext off for their own texts only: a caller's figure afterwards parses `$…$` as
    before (no global rcParams change)."""
    import matplotlib.pyplot as plt

    from poisonbench.report import figures

    figures.draw("rho", mathtext_records(), tmp_path)
    fig = plt.figure()
    try:
        assert fig.text(0, 0, "$x$").get_parse_math() is True
    finally:
        plt.close(fig)


# --------------------------------------------------------------------- malformed fields: checked, or tolerated

def at(record: dict, path: str):
    node = record
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def put(record: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = record
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value


CHECKED = [  # (which record, field, value, the whole problem the check names): skipped and named
    ("mix", "config.poison.poison_ids", ["pgd=abc"],
     "config.poison.poison_ids is ['pgd=abc'], not an object of strings (attack → PoisonSet id)"),
    ("mix", "config.poison.poison_sets", "pgd=abc",
     "config.poison.poison_sets is 'pgd=abc', not an object of strings (attack → PoisonSet id)"),
    ("mix", "config.poison.attacks", "pgd", "config.poison.attacks is 'pgd', not a list of strings"),
    ("mix", "config.poison.eps", [8], "config.poison.eps is [8], not a number >= 0"),
    ("mix", "config.poison.kind", ["untargeted"], "config.poison.kind is ['untargeted'], not a string"),
    ("mix", "env", "cuda", "env is 'cuda', not an object"),
    ("mix", "defense", "hint", "defense is 'hint', not an object"),
    ("mix", "cost.train", {"x": 1}, "cost.train is {'x': 1}, not a number >= 0"),
    ("mix", "cost.defense_epoch", None, "cost.defense_epoch is None, not a number >= 0"),
    ("mix", "cost.eval", "0.5", "cost.eval is '0.5', not a number >= 0"),
    ("mix", "cost.defense_batch", [1, 2], "cost.defense_batch is [1, 2], not a number >= 0"),
    ("mix", "config.dataset_fingerprint", ["fp"], "config.dataset_fingerprint is ['fp'], not a string"),
    ("mix", "config.npz_split", "0.8,0.1", "config.npz_split is '0.8,0.1', not a list of numbers"),
    ("mix", "config.threat", ["gray"], "config.threat is ['gray'], not a string"),
    ("mix", "config.precision", {"bf16": 1}, "config.precision is {'bf16': 1}, not a string"),
    ("mix", "config.recipe.milestones", 5, "config.recipe.milestones is 5, not a list of integers"),
    ("targeted", "config.poison.attack", ["bp"], "config.poison.attack is ['bp'], not a string"),
    ("targeted", "config.poison.target_class", "5", "config.poison.target_class is '5', not an integer >= 0"),
    ("targeted", "config.poison.target_index", 1.5, "config.poison.target_index is 1.5, not an integer >= 0"),
    ("targeted", "config.poison.intended_class", -1, "config.poison.intended_class is -1, not an integer >= 0"),
    ("targeted", "config.poison.poison_id", 7, "config.poison.poison_id is 7, not a string"),
    ("removal", "defense.removal", [1], "defense.removal is [1], not an object"),
    ("removal", "defense.removal.poisons_removed", "1", "defense.removal.poisons_removed is '1', not an integer >= 0"),
    ("dp", "defense.accounting", "eps=2", "defense.accounting is 'eps=2', not an object"),
    ("dp", "defense.accounting.delta", None, "defense.accounting.delta is None, not a number >= 0"),
    ("dp", "defense.accounting.epsilon", "2.5", "defense.accounting.epsilon is '2.5', not a number >= 0"),
    ("dp", "defense.accounting.steps", [100], "defense.accounting.steps is [100], not an integer >= 0"),
    ("dp", "defense.accounting.sampling", {"p": 1}, "defense.accounting.sampling is {'p': 1}, not a string"),
    ("bp-inputs", "inputs.poisons.0.attack", ["bp"], "inputs.poisons[0].attack is ['bp'], not a string"),
    ("bp-inputs", "inputs.poisons", 2.5, "inputs.poisons is 2.5, not a list"),
    ("bp-inputs", "inputs", "bp", "inputs is 'bp', not an object"),
]


def one_of(kind: str) -> dict:
    recs = every_kind()
    pick = {"mix": lambda r: (r["config"]["poison"] or {}).get("attacks") == tables.PAPER_MIX.split(","),
            "targeted": lambda r: (r["config"]["poison"] or {}).get("kind") == "targeted",
            "removal": lambda r: "removal" in r["defense"], "dp": lambda r: "accounting" in r["defense"],
            "bp-inputs": lambda r: "inputs" in r}[kind]
    return copy.deepcopy(next(r for r in recs if pick(r)))


@pytest.mark.parametrize(("kind", "path", "value", "problem"), CHECKED, ids=[c[1] + "-" + repr(c[2]) for c in CHECKED])
def test_the_check_names_a_field_the_reports_cannot_read(kind, path, value, problem):
    record = one_of(kind)
    assert record_problem(record) is None
    put(record, path, value)
    assert not missing_fields(record)
    assert record_problem(record) == problem


def test_records_the_check_skips_are_named_and_every_report_runs_on_the_rest(cli, tmp_path, no_images):
    """The issue's cases (a list for `poison_ids`, a string for `env` or `defense`, an object for a `cost` value)
    crashed every report command; each such record is now skipped and named with its field, and every report
    renders the others."""
    good = every_kind()
    bad = []
    for i, (kind, path, value, _) in enumerate(CHECKED):
        record = one_of(kind)
        record["config"]["trial"] = 100 + i
        put(record, path, value)
        bad.append(rehashed(record))
    res = write_records(tmp_path / "res", good + bad)
    done = run_every_report(cli, res, tmp_path / "out")
    for name, (code, _, err) in done.items():
        assert code == 0 and "Traceback" not in err, (name, err)
        for record, (_, _, _, problem) in zip(bad, CHECKED, strict=True):
            assert f"{record['run_id']}.json: {problem}" in err, (name, problem)


TOLERATED = [  # (which record, field, value): drawn as absent, the run still counted in the tables
    ("clean0", "metrics.sample_predictions", "yes"),
    ("clean0", "metrics.sample_predictions", [1, 2]),
    ("clean0", "metrics.sample_predictions.pred", [1]),
    ("clean0", "metrics.sample_predictions.prob", ["a"] * 10),
    ("clean0", "metrics.sample_predictions.labels", "0123456789"),
    ("clean0", "metrics.sample_predictions.test_indices", [0.5] * 10),
    ("hint0", "defense.examples", "x"),
    ("hint0", "defense.examples.0.shape", [1, 5, 5]),
    ("hint0", "defense.examples.0.x", "abc"),
    ("hint0", "defense.examples.0.prob_original", "0.5"),
    ("hint0", "defense.noise", "beta"),
    ("mp0", "metrics.target_prediction", "1"),
    ("mp0", "metrics.target_probs", {"1": 0.9}),
    ("mp0", "metrics.target_probs", ["a"] * 10),
]


def tolerated_record(kind: str) -> dict:
    recs = every_kind()
    pick = {"clean0": lambda r: r["config"]["poison"] is None and r["config"]["trial"] == 0,
            "hint0": lambda r: bool(r["defense"].get("examples")),
            "mp0": lambda r: (r["config"]["poison"] or {}).get("attack") == "mp" and r["config"]["trial"] == 0}[kind]
    return next(r for r in recs if pick(r))


@pytest.mark.parametrize(("kind", "path", "value"), TOLERATED, ids=[f"{c[1]}-{c[2]!r}"[:60] for c in TOLERATED])
def test_a_malformed_figure_payload_is_drawn_as_absent(cli, tmp_path, no_images, kind, path, value):
    """A payload only one figure draws passes the check (the run's numbers count in every table) and the figure
    draws the run as if it had none, warning once with the run and the field."""
    recs = every_kind()
    target = tolerated_record(kind)
    record = next(r for r in recs if r["run_id"] == target["run_id"])
    put(record, path, value)
    assert record_problem(record) is None
    res = write_records(tmp_path / "res", recs)
    figure = {"clean0": "2", "hint0": "1", "mp0": "3"}[kind]
    code, out, err = cli("report", "figure", figure, "--results", res, "--out", tmp_path / "out")
    assert code == 0 and "Traceback" not in err, err
    assert out.strip().endswith(".png"), err  # the figure is drawn
    field = path.split(".")[0] + "." + path.split(".")[1]
    assert f"run {record['run_id']}: {field}" in err, err


# ------------------------------------------------------------------------------------- the contract, swept

BAD_VALUES = [None, True, -1, 2.5, "x", "", "$\\nope{$", [], [1, "a"], {}, {"a": [1]}, float("nan")]


def leaf_paths(record: dict, prefix: str = "") -> list[str]:
    """Every field of `record` (a list of objects by its first element; a list of numbers as one field)."""
    out = []
    items = record.items() if isinstance(record, dict) else enumerate(record[:1])
    for key, value in items:
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            out += leaf_paths(value, path + ".")
    return out


def swept_paths() -> list[str]:
    paths = set()
    for r in every_kind():
        paths |= set(leaf_paths(r))
    return sorted(paths - {"schema_version", "run_id"})


FIGURE_FIELDS = {  # the fields a figure reads beyond the tables' (its own payload, its title): which figures
    "metrics.sample_predictions": ("2",), "defense.examples": ("1",), "defense.noise": ("1",),
    "config.defense.gamma": ("1",), "config.defense.ratio": ("1",), "metrics.target_": ("3", "4"),
    "metrics.attack_success": ("3", "4"), "config.poison.target_": ("3", "4"),
    "config.poison.intended_class": ("3", "4"),
}


@pytest.mark.parametrize("path", swept_paths())
def test_any_record_the_check_admits_is_reported(path, tmp_path, no_images):
    """The contract itself: each field of each kind of record given a wrong type (another value per record, so
    that every value of BAD_VALUES meets most kinds of record), the records the check admits go through every table
    in every format, the plain report and `missing` (and, for a field a figure reads, the figures that read it)
    without an exception."""
    from poisonbench.report import figures
    from poisonbench.report.figures.panels import captured

    recs, changed = every_kind(), set()
    for i, r in enumerate(recs):
        try:
            at(r, path)
        except (KeyError, IndexError, TypeError):
            continue
        put(r, path, copy.deepcopy(BAD_VALUES[i % len(BAD_VALUES)]))
        changed.add(r["run_id"])
    admitted = [r for r in recs if not missing_fields(r) and record_problem(r) is None]
    if not changed & {r["run_id"] for r in admitted}:
        return  # every changed record is skipped: the rest is `every_kind()` (test_every_kind_draws_every_figure…)
    table_texts(admitted)
    drawn = [number for prefix, numbers in FIGURE_FIELDS.items() if path.startswith(prefix) for number in numbers]
    with captured():
        for number in drawn:
            figures.draw(number, admitted, tmp_path)


def test_every_kind_draws_every_figure_and_page(tmp_path, no_images):
    """The records the sweep starts from fill every table, figure and the page (so the sweep reaches them all)."""
    from poisonbench.report import figures
    from poisonbench.report.figures.panels import captured

    recs = every_kind()
    assert all(record_problem(r) is None for r in recs)
    for number in (*tables.TABLES, tables.MATRIX):
        assert not tables.build(number, recs, tables.Options(), mix="any" if number == "matrix" else
                                tables.PAPER_MIX).empty, number
    with captured() as kept:
        for number in figures.FIGURES:
            figures.draw(number, recs, tmp_path)
    assert sorted(name.split("_")[0] for name, _ in kept) == ["fig1", "fig2", "fig3", "fig4", "rho"]
    page = html.page(recs, "x", {})
    assert page.count("<img") == 7  # five figures and the matrix's two heatmaps (mnist-5k, cifar10)
    assert json.loads(json.dumps(recs)) == recs
