"""`report --table matrix`: every defense against every attack, one block per setting (docs/metrics.md,
"Defense × attack matrix").

Rows: the defenses with records, in the DEFENSES registry order (`none` first, always shown; an upper bound such as
the oracle is labelled "(upper bound)" and its entries say `upper_bound`: it is no defense); methods the registry
no longer knows follow alphabetically. Columns: `clean` (ρ = 0 runs) where there are any, then the attacks in the
ATTACKS registry order. An untargeted column holds the test accuracy of runs against that attack *alone* (the
record's untargeted config lists exactly that one attack) at the chosen poison ratio (`--poison-ratio`, default
1.0); runs of a mix of attacks never enter a cell. A targeted column holds k/n (attack successes over runs) of that
targeted attack; where an attack has runs of both targeted scenarios (scratch and transfer), each gets its own
column. Runs on PoisonSets crafted on a schedule other than the attack's official one (REM's `--schedule budget`)
get a column of their own, labelled "rem (budget)". A cell without runs is `–`, never filled in. Per cell, one
parameter set of the defense is shown (`primary`: HINT at the paper's r and β, else the defense's defaults, else the
set with the most runs); a note counts the others. A backdoor's column (issue 85) holds its mean attack success rate
over trials (± std, n) and the mean clean test accuracy of the same runs, at the poison fraction of its newest run.
"""

from __future__ import annotations

import pandas as pd

from .layout import DASH, HINT_PAPER, MATRIX, Block, Cell, Options, Table, method_label, rho_text, upper_bound
from .privacy import privacy_notes
from .records import in_setting, left_out_note, primary, settings
from .stats import close, num, stat

CAPTION = ("Every defense against every attack: test accuracy (%) against each untargeted attack alone at poison "
           "ratio ρ = {rho} and without poisons (clean), mean ± std over trials (n); attack success k/n against each "
           "targeted attack; against each backdoor, its attack success rate (ASR %, triggered test images of the "
           "other classes taken for the target) and the clean test accuracy, means over trials")
DEFAULT_POISON_RATIO = 1.0


def registry_methods() -> list[str]:
    from ...defenses import DEFENSES

    return DEFENSES.names()


def registry_attacks() -> list[str]:
    from ...attacks import ATTACKS

    return ATTACKS.names()


def untargeted_attacks() -> list[str]:
    """The registered attacks that poison without a target (the ones a column of accuracies is for)."""
    from ...attacks import ATTACKS

    return [a for a in ATTACKS.names()
            if not ATTACKS.get(a).targeted and not getattr(ATTACKS.get(a), "backdoor", False)]


def backdoor_names() -> list[str]:
    """The registered backdoor attacks (a column of ASRs is for them)."""
    from ...attacks import backdoor_attacks

    return backdoor_attacks()


def row_methods(present: set[str]) -> list[str]:
    """`none` first (always), then the defenses with records in the registry order, then unknown ones."""
    known = registry_methods()
    ordered = ["none"] + [m for m in known if m != "none" and m in present]
    return ordered + sorted(present - set(known))


def attack_order(attacks: set[str], wanted: list[str] | None) -> list[str]:
    if wanted:
        return list(wanted)
    known = registry_attacks()
    return [a for a in known if a in attacks] + sorted(attacks - set(known))


def schedule_of(schedules: pd.Series) -> pd.Series:
    """A single-attack run's schedule other than the official one ("budget", "official+train_steps=2590"), ""
    when official or unknown ("rem=official+train_steps=2590": what follows the attack's name)."""
    return schedules.fillna("").str.split("=", n=1).str[-1]


def targeted_label(column: str) -> str:
    """A targeted column's label: the attack's name, or its objective's where the attack has two (FC's `fc-mean`
    and `fc-per-poison`: `paper.ATTACK_LABEL`, lower case as the other columns)."""
    from ..paper import ATTACK_LABEL

    return ATTACK_LABEL.get(column, column).lower()


def columns_of(df: pd.DataFrame, rho: float, wanted: list[str] | None) -> list[tuple[str, str, str]]:
    """(column label, kind, key) per column: ("clean", "clean", ""), (attack, "untargeted", attack), (attack
    (schedule), "untargeted", "attack|schedule") for runs on a non-official schedule, and (label, "targeted",
    "attack|scenario" or "attack|") in the ATTACKS registry order (or `wanted`'s)."""
    single = df[(df.kind == "untargeted") & ~df.mix.str.contains(",") & close(df.rho, rho)]
    targeted = df[df.kind == "targeted"]
    backdoor = set(df[df.kind == "backdoor"].attack)
    cols: list[tuple[str, str, str]] = []
    if (df.kind == "clean").any():
        cols.append(("clean", "clean", ""))
    for a in attack_order(set(single.mix) | set(targeted.attack) | backdoor, wanted):
        if a in backdoor or (wanted and a in backdoor_names()):  # its ASR and clean accuracy (metrics.md)
            cols.append((a, "backdoor", a))
            continue
        scenarios = sorted({str(s) for s in targeted[targeted.attack == a].scenario})
        if a in set(single.mix) or (wanted and not scenarios and a in untargeted_attacks()):
            schedules = set(schedule_of(single[single.mix == a].schedules))
            if "" in schedules or not schedules:  # the official schedule's runs (or none yet)
                cols.append((a, "untargeted", a))
            cols += [(f"{a} ({o})", "untargeted", f"{a}|{o}") for o in sorted(schedules - {""})]
        name = targeted_label(a)
        if wanted and not scenarios and a not in set(single.mix) and a not in untargeted_attacks():
            cols.append((name, "targeted", f"{a}|"))  # a targeted attack asked for by name, without runs yet
        if len(scenarios) > 1:
            cols += [(f"{name} ({sc})", "targeted", f"{a}|{sc}") for sc in scenarios]
        elif scenarios:
            cols.append((name, "targeted", f"{a}|"))
    return cols


def column_rows(sdf: pd.DataFrame, kind: str, key: str, rho: float) -> pd.DataFrame:
    if kind == "clean":
        return sdf[sdf.kind == "clean"]
    if kind == "untargeted":
        attack, _, schedule = key.partition("|")
        return sdf[(sdf.kind == "untargeted") & (sdf.mix == attack) & close(sdf.rho, rho)
                   & (schedule_of(sdf.schedules) == schedule)]
    if kind == "backdoor":
        return sdf[(sdf.kind == "backdoor") & (sdf.attack == key)]
    attack, scenario = key.split("|")
    rows = sdf[(sdf.kind == "targeted") & (sdf.attack == attack)]
    return rows[rows.scenario == scenario] if scenario else rows


def newest_kind(rows: pd.DataFrame, label: str, notes: list) -> pd.DataFrame:
    """A targeted column compares one kind of poisons (ε, budget, attack parameters; each trial has its own
    target): that of its most recently finished run, as Table III's columns do."""
    if rows.poisons_json.nunique() < 2:
        return rows
    newest = rows.sort_values(["finished_at", "run_id"]).poisons_json.iloc[-1]
    notes.append(f"not shown: {int((rows.poisons_json != newest).sum())} {label} run(s) whose poisons differ in ε, "
                 "budget or attack parameters from the column's newest run (a column shows one kind)")
    return rows[rows.poisons_json == newest]


def acc_text(st, opts: Options) -> str:
    text = f"{100 * st.mean:.2f}"
    if st.n > 1:
        text += f" ± {100 * st.std:.2f}"
        if opts.ci:
            text += f" [{100 * st.lo:.2f}, {100 * st.hi:.2f}]"
    return text + f" (n={st.n})"


def matrix(df: pd.DataFrame, opts: Options) -> Table:
    rho = DEFAULT_POISON_RATIO if opts.poison_ratio is None else opts.poison_ratio
    wanted = list(opts.attacks) if opts.attacks else None
    df = df[df.kind.isin(["clean", "untargeted", "targeted", "backdoor"])]
    if wanted:
        df = df[(df.kind == "clean") | df.mix.isin(wanted) | df.attack.isin(wanted)]
    blocks, data, shown = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        notes: list[str] = []
        mixed = sdf[(sdf.kind == "untargeted") & sdf.mix.str.contains(",")]
        if len(mixed):
            notes.append(f"not shown: {len(mixed)} untargeted run(s) of attack mixes "
                         f"({' | '.join(sorted(set(mixed.mix)))}); a cell holds runs of one attack alone "
                         "(Table II shows mixes)")
        other_rho = sdf[(sdf.kind == "untargeted") & ~sdf.mix.str.contains(",") & ~close(sdf.rho, rho)]
        if len(other_rho):
            notes.append(f"not shown: {len(other_rho)} single-attack run(s) at ρ = "
                         f"{', '.join(rho_text(r) for r in sorted(set(other_rho.rho)))} (this matrix: ρ = "
                         f"{rho_text(rho)}; --poison-ratio)")
        cols = columns_of(sdf, rho, wanted)
        if not cols:
            continue
        eligible = pd.concat([column_rows(sdf, kind, key, rho) for _, kind, key in cols])
        methods = row_methods(set(eligible.method))  # a defense whose runs are all mixes or at another ρ: no row
        block = Block(s.label, ["defense", *(label for label, _, _ in cols)])
        cells: dict[tuple[str, str], dict] = {}
        stats = {}
        privacy: list[str] = []  # ε of the DP-SGD cells, column by column
        for label, kind, key in cols:
            rows = column_rows(sdf, kind, key, rho)
            if kind in ("targeted", "backdoor"):
                rows = newest_kind(rows, label, notes)
            for m in methods:
                chosen, left = primary(rows, m, HINT_PAPER if m == "hint" else None)
                notes.append(left_out_note(m, chosen, left, see=f"column {label}; see plain `report`"))
                shown |= set(chosen.run_id)
                privacy += privacy_notes(chosen, where=f"column {label}")
                entry = {"column": label, "kind": kind, "attack": key.split("|")[0] if key else None,
                         "scenario": (key.split("|")[1] or None) if kind == "targeted" else kind,
                         # a backdoor's rows are its own (config.poison.ratio), not the matrix's ρ
                         "rho": 0.0 if kind == "clean" else (rho if kind == "untargeted" else None),
                         "method": m, "upper_bound": upper_bound(m),
                         "params": chosen.params_json.iloc[0] if len(chosen) else None}
                if kind == "backdoor":
                    st = stats[(m, label)] = stat(chosen.asr.dropna())
                    acc = stat(chosen.test_acc)
                    entry.update(n=st.n if st else 0, asr=num(100 * st.mean) if st else None,
                                 asr_std=num(100 * st.std) if st else None,
                                 asr_hits=int(chosen.asr_hits.sum()) if st else None,
                                 asr_n=int(chosen.asr_n.sum()) if st else None,
                                 mean=num(100 * acc.mean) if acc else None)
                elif kind == "targeted":
                    succ = [bool(x) for x in chosen.success if x is not None and not pd.isna(x)]
                    entry.update(n=len(succ), successes=sum(succ),
                                 success_rate=num(sum(succ) / len(succ)) if succ else None)
                else:
                    st = stats[(m, label)] = stat(chosen.test_acc)
                    entry.update(n=st.n if st else 0, mean=num(100 * st.mean) if st else None,
                                 std=num(100 * st.std) if st else None)
                cells[(m, label)] = entry
        for m in methods:
            row = [Cell(method_label(m), label=True)]
            for label, kind, _ in cols:
                entry, base = cells[(m, label)], cells[("none", label)]
                if not entry["n"]:
                    row.append(Cell())
                elif kind == "targeted":
                    row.append(Cell(f"{entry['successes']}/{entry['n']}", entry["success_rate"]))
                elif kind == "backdoor":
                    st = stats[(m, label)]
                    text = f"ASR {acc_text(st, opts)} · acc {entry['mean']:.2f}"
                    delta = None
                    if m != "none" and base["n"]:
                        delta = num(entry["asr"] - base["asr"], 2)
                        if opts.diff:
                            text += f" Δ {delta:+.2f}"
                    row.append(Cell(text, round(100 * st.mean, 2)))
                    entry["delta_vs_none"] = delta
                else:
                    st = stats[(m, label)]
                    text = acc_text(st, opts)
                    delta = None
                    if m != "none" and base["n"]:
                        delta = num(entry["mean"] - base["mean"], 2)
                        if opts.diff:
                            text += f" Δ {delta:+.2f}"
                    row.append(Cell(text, round(100 * st.mean, 2)))
                    entry["delta_vs_none"] = delta
                if kind == "targeted":
                    entry["delta_vs_none"] = (num(entry["success_rate"] - base["success_rate"])
                                              if m != "none" and entry["n"] and base["n"] else None)
                data.append({"table": "matrix", **setting_fields(s), **entry})
            block.rows.append(row)
        if opts.diff:
            notes.append("Δ: the defense's mean test accuracy minus W/o Defense's in the same column (points)"
                         + ("; in a backdoor's column, its mean ASR minus W/o Defense's" if any(
                             kind == "backdoor" for _, kind, _ in cols) else ""))
        if not any(cells[("none", label)]["n"] for label, _, _ in cols):
            notes.append(f"{method_label('none')} has no runs in this setting: its row is empty ({DASH})")
        block.notes = list(dict.fromkeys(n for n in notes + privacy if n))
        blocks.append(block)
    return Table(MATRIX, CAPTION.format(rho=rho_text(rho)), blocks, data, shown=shown)


def setting_fields(s) -> dict:
    return {"dataset": s.dataset, "model": s.model, "recipe": s.recipe, "epochs": s.epochs, "setting": s.label}
