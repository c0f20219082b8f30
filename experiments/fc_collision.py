"""How close feature-collision (FC) poisons get to their target in the transfer extractor's feature space, and what
their Deep k-NN neighbourhoods look like: why the k-NN filter removes few FC poisons in our transfer runs.

For every FC PoisonSet of the workspaces, in the penultimate features φ of the extractor it was crafted against
(the frozen one the victim and the filter use): d_pt = mean ‖φ(poison) − φ(target)‖, d_bt = the same for the clean
bases, ratio = d_pt / d_bt (1: no movement toward the target, 0: collision), d_pm = ‖mean φ(poison) − φ(target)‖
(forest matches the poisons' mean feature, toxic each poison's), d_nn = the median distance of a clean transfer row
to its nearest other one (the scale a k-NN works at). Among the rows the victim trains on (the transfer set with
the poisons), k = 2p + 1 as the filter's default: `kept` = the share of poisons Deep k-NN (self-vote, ties keep)
keeps, `own nbr` / `tgt nbr` / `psn nbr` = the share of their k − 1 nearest other rows of their own label / of the
target's class / that are other poisons, `tgt rank` = the median number of those rows nearer to a poison than the
target is. `extractor` is the extractor's recipe (quick | paper); a mean row per dataset, extractor, impl, ε, budget.

    python experiments/fc_collision.py RESULTS [RESULTS...] [--data-dir D] [--dataset PATH.npz] [--eps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from poisonbench import poisons
from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.defenses.knn import knn_keep
from poisonbench.engine.model_cache import weights_sha256
from poisonbench.engine.models import build_model
from poisonbench.engine.pretrained import transfer_split

COLUMNS = ("dataset", "extractor", "impl", "ε", "budget", "seed", "n", "d_pt", "d_bt", "ratio", "d_pm", "d_nn", "kept",
           "own nbr", "tgt nbr", "psn nbr", "tgt rank")


def safetensors_metadata(raw: bytes) -> dict:
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + size]).get("__metadata__") or {}


def load_extractor(manifest: dict, data) -> torch.nn.Module:
    """The extractor the PoisonSet names (`surrogate_info.path`), built as `trained_models._load` does and checked
    against the weights hash the manifest recorded."""
    info = manifest["surrogate_info"]
    raw = Path(info["path"]).read_bytes()
    spec = json.loads(safetensors_metadata(raw)["spec"])
    state = st_load(raw)
    if info.get("weights_sha256") not in (None, weights_sha256(state)):
        raise PoisonbenchError(f"extractor {info['path']} is not the one poison set {manifest['poison_id']} names")
    model = build_model(spec["model"], data, seed=spec["seed"])  # the weights are loaded next: any seed would do
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.features(x[i:i + 256]).flatten(1).float() for i in range(0, len(x), 256)])


def dataset_for(name: str, fingerprint: str, npz_paths: dict, data_dir, results: Path, cache: dict):
    if name.endswith(".npz"):
        candidates = [npz_paths.get(name)] + [Path(d) / name for d in (data_dir, results, results.parent) if d]
        path = next((str(p) for p in candidates if p is not None and Path(p).is_file()), None)
        if path is None:
            raise PoisonbenchError(f"dataset file {name!r} not found: pass --dataset PATH/{name}")
    else:
        path = name
    if path not in cache:
        cache[path] = load_dataset(path, data_dir if not path.endswith(".npz") else None)
    data = cache[path]
    if data.fingerprint != fingerprint:
        raise PoisonbenchError(f"{path}: fingerprint {data.fingerprint}, the PoisonSets need {fingerprint}")
    return data


def measure(results: Path, manifest: dict, data, extractors: dict) -> dict:
    poison = poisons.load(results, manifest["poison_id"], data)
    target = manifest["target"]
    path = manifest["surrogate_info"]["path"]
    if path not in extractors:
        extractors[path] = load_extractor(manifest, data)
    model = extractors[path]

    rows = torch.unique(torch.cat([transfer_split(data)[1], poison.indices]))  # Transfer.train_rows
    x = to_float(data.train.x[rows], torch.device("cpu"))
    y = data.train.y[rows].long()
    is_poison = torch.isin(rows, poison.indices)
    at = torch.searchsorted(rows, poison.indices)
    clean_bases = x[at].clone()
    x[at] = (x[at] + poison.rows_for(poison.indices)).clamp_(0, 1)

    phi = features(model, x)
    phi_bases = features(model, clean_bases)
    phi_target = features(model, to_float(data.test.x[target["index"]:target["index"] + 1], torch.device("cpu")))
    phi_poisons = phi[at]
    d_pt = torch.linalg.vector_norm(phi_poisons - phi_target, dim=1)
    d_bt = torch.linalg.vector_norm(phi_bases - phi_target, dim=1)
    d_pm = torch.linalg.vector_norm(phi_poisons.mean(0) - phi_target[0])

    clean = phi[~is_poison]
    dist_clean = torch.cdist(clean, clean)
    dist_clean.fill_diagonal_(float("inf"))
    d_nn = dist_clean.min(1).values.median()

    p = len(poison.indices)
    k = 2 * p + 1  # the filter's default k = 2·budget + 1 (knn.py); self-vote: the row plus its k − 1 nearest others
    keep = knn_keep(phi, y, k, data.num_classes, include_self=True)
    dist = torch.cdist(phi_poisons, phi)
    dist[torch.arange(p), at] = float("inf")
    others = dist.topk(min(k - 1, len(rows) - 1), dim=1, largest=False).indices
    target_rank = (dist < d_pt[:, None]).sum(1).float()
    return {
        "dataset": manifest["dataset"], "extractor": manifest["params"].get("surrogate_recipe") or "",
        "impl": manifest["params"].get("impl") or "", "eps": manifest["eps"],
        "budget": manifest["budget"], "seed": manifest["seed"], "n": p,
        "d_pt": float(d_pt.mean()), "d_bt": float(d_bt.mean()), "ratio": float(d_pt.mean() / d_bt.mean()),
        "d_pm": float(d_pm), "d_nn": float(d_nn), "kept": float(keep[at].float().mean()),
        "own nbr": float((y[others] == y[at][:, None]).float().mean()),
        "tgt nbr": float((y[others] == target["true_class"]).float().mean()),
        "psn nbr": float(is_poison[others].float().mean()), "tgt rank": float(target_rank.median()),
    }


def row(values: dict, label: str | None = None) -> str:
    head = [values["dataset"], values["extractor"], values["impl"], f"{values['eps'] * 255:.0f}/255",
            f"{100 * values['budget']:.1f} %", label or str(values["seed"]), str(values["n"])]
    body = [f"{values[c]:.2f}" for c in COLUMNS[7:]]
    return "| " + " | ".join(head + body) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results workspaces (read only)")
    parser.add_argument("--data-dir", default=None, help="data directory of registry datasets; also searched for .npz")
    parser.add_argument("--dataset", action="append", default=[], help=".npz dataset file a manifest names")
    parser.add_argument("--eps", type=float, action="append", default=None, help="only ε = N/255 (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    npz_paths = {Path(p).name: p for p in args.dataset}
    datasets, extractors, rows = {}, {}, []
    for results in map(Path, args.results):
        for manifest in sorted(poisons.list_manifests(results),
                               key=lambda m: (m["dataset"], m["params"].get("surrogate_recipe") or "",
                                              m["params"].get("impl") or "", m["eps"], m["budget"],
                                              m["seed"])):
            if manifest["attack"] != "fc":
                continue
            if args.eps and all(abs(manifest["eps"] * 255 - e) > 0.01 for e in args.eps):
                continue
            data = dataset_for(manifest["dataset"], manifest["dataset_fingerprint"], npz_paths, args.data_dir,
                               results, datasets)
            rows.append(measure(results, manifest, data, extractors))
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    groups = defaultdict(list)
    for values in rows:
        groups[(values["dataset"], values["extractor"], values["impl"], values["eps"], values["budget"])].append(values)
    for group in groups.values():
        for values in group:
            print(row(values))
        mean = {c: statistics.fmean(v[c] for v in group) for c in COLUMNS[7:]}
        mean.update({c: group[0][c] for c in ("extractor", "impl", "eps", "budget")},
                    dataset=f"**{group[0]['dataset']}**", n=f"{statistics.fmean(v['n'] for v in group):.1f}")
        print(row(mean, f"**mean of {len(group)}**"))


if __name__ == "__main__":
    main()
