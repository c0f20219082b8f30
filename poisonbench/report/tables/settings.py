"""The settings a table has one block for: dataset (name, fingerprint, split), model, resolved recipe, whether
the victims started from the attacker's initialisation (`defend --same-init`, a setting of its own), and the
transfer victims' threat model and head BatchNorm mode (`defend --threat`, `--head-bn`): transfer runs of another
threat or BN mode make a block of their own, and the runs of other scenarios (scratch: no such mode) join every
block of their dataset, model and recipe, so a Table III block holds GM from scratch beside BP and FC in one
transfer mode."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from ...core.hashing import short_hash
from .. import paper


@dataclass(frozen=True)
class Setting:
    """What a table block holds fixed: dataset (name and fingerprint), model and the resolved recipe."""

    dataset: str
    model: str
    recipe: str
    epochs: int
    recipe_json: str
    fingerprint: str = ""  # config.dataset_fingerprint: two .npz files of one name, or a changed split, differ
    npz_split: str = ""  # config.npz_split as "VAL,TEST" (`--npz-split`), "" for the default split
    tag: str = ""  # disambiguates settings that would read alike: other recipe overrides, other data
    init: str = ""  # "surrogate": victims started from the attacker model's initialisation (`--same-init`)
    threat: str = ""  # transfer runs': config.threat (gray | white), "" where the block has none
    head_bn: str = ""  # transfer runs': config.head_bn (train | eval), "" where the block has none

    @property
    def label(self) -> str:
        same = " · victim from the surrogate's init (--same-init)" if self.init else ""
        transfer = f" · transfer: {self.threat}-box, head BN {self.head_bn}" if self.threat else ""
        return f"{self.dataset} · {self.model} · {self.recipe} recipe, {self.epochs} ep{self.tag}{same}{transfer}"

    @property
    def reduced(self) -> list[str]:
        return paper.reduced_scale(self.dataset, self.recipe, self.epochs, guess_family(self))


def settings(df: pd.DataFrame) -> list[Setting]:
    named = ["dataset", "model", "recipe", "epochs"]
    keys = df[[*named, "recipe_json", "dataset_fingerprint", "npz_split", "init"]].drop_duplicates(
        [*named, "recipe_json", "dataset_fingerprint", "init"])  # the fingerprint covers the split
    keys = keys.sort_values([*named, "recipe_json", "dataset_fingerprint", "init"])
    recipes = keys.groupby(named).recipe_json.nunique()
    data = keys.groupby(named).dataset_fingerprint.nunique()
    out = []
    for k in keys.itertuples(index=False):
        name = (k.dataset, k.model, k.recipe, k.epochs)
        tag = f" #{short_hash(k.recipe_json, 6)}" if recipes[name] > 1 else ""
        tag += f" · data {k.dataset_fingerprint or 'without fingerprint'}" if data[name] > 1 else ""
        for threat, head_bn in transfer_modes(df, k):
            out.append(Setting(k.dataset, k.model, k.recipe, int(k.epochs), k.recipe_json,
                               fingerprint=k.dataset_fingerprint, npz_split=k.npz_split, tag=tag, init=k.init,
                               threat=threat, head_bn=head_bn))
    return out


def transfer_modes(df: pd.DataFrame, k) -> list[tuple[str, str]]:
    """The (threat, head BN) modes of the transfer runs of one setting's key, sorted ([("", "")] for none)."""
    if "threat" not in df:
        return [("", "")]
    rows = df[(df.dataset == k.dataset) & (df.dataset_fingerprint == k.dataset_fingerprint) & (df.model == k.model)
              & (df.recipe_json == k.recipe_json) & (df.init == k.init) & (df.threat != "")]
    return sorted(set(zip(rows.threat, rows.head_bn, strict=True))) or [("", "")]


def in_setting(df: pd.DataFrame, s: Setting) -> pd.DataFrame:
    keep = ((df.dataset == s.dataset) & (df.dataset_fingerprint == s.fingerprint) & (df.model == s.model)
            & (df.recipe_json == s.recipe_json) & (df.init == s.init))
    if "threat" in df:  # transfer runs of this block's mode, and every run without one (scratch, untargeted)
        keep &= (df.threat == "") | ((df.threat == s.threat) & (df.head_bn == s.head_bn))
    return df[keep]


def guess_family(s: Setting) -> str | None:
    family = paper.family_of(s.dataset)
    if family or not s.recipe_json:
        return family
    from ...engine.recipes import RECIPES

    rec = json.loads(s.recipe_json)
    best = None
    for fam, recipes in RECIPES.items():
        if s.recipe in recipes:
            diff = sum(rec.get(k) != v for k, v in recipes[s.recipe].to_dict().items() if k != "epochs")
            if best is None or diff < best[0]:
                best = (diff, fam)
    return best[1] if best else None
