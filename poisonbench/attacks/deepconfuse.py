"""`deepconfuse`: Feng et al.'s DeepConfuse (NeurIPS'19; DC:MNIST/train.py, CIFAR/train.py).

A generator G (MNIST: DC's small conv autoencoder; CIFAR-10: DC's U-Net), output ε·tanh, is trained with the
alternating pseudo-update scheme against a classifier (MNIST: DC's LeNet-BN `create_net`; CIFAR-10: DC's VGG11
with a 2-d bottleneck). Per batch (x, y):

1. θ' = θ − lr·∇θ CE(f_θ(clamp(x + ε·G(x))), y), keeping the graph (one SGD pseudo-step);
2. generator step (Adam): minimise −CE(f_θ'(x), y), i.e. maximise the clean loss after the pseudo-update;
3. classifier step (SGD): CE(f_θ(clamp(x + ε·G_prev(x))), y) with G_prev the frozen generator of the previous
   outer epoch.

After `inner_epochs` epochs, G_prev ← G, the classifier is re-initialised, a fresh scratch classifier is trained
`inner_epochs` epochs on the poisoned train split, and the generator whose scratch classifier has the lowest
clean accuracy is kept. The poison is clamp(x + ε·G_best(x), 0, 1) − x.

The official schedule (1000 outer epochs) is days of GPU time. The default here is a *budget* schedule that
trains on mnist-5k within 10 minutes on a 2-core CPU (docs/fidelity.md); `--official-schedule` restores DC's
argparse defaults. A trained generator can be imported instead (`import_generator`; DC ships its MNIST one as
`MNIST/pretrained/atkmnist_best.pt`): the `generator` option then names it by sha256 and nothing is trained, as
DC's `generate_adv_data.py` does. Deviations: `torch.func.functional_call` replaces the per-batch fresh module;
the scratch classifier is scored on the clean train split instead of the test split (no test leakage into crafting).
The generator's and the classifiers' initialisation and batch order draw from an attacker seed derived from the
crafting seed (`poisonbench.core.seeds`), never the crafting seed itself: the mix's crafting seed is 0, trial 0's victim
seed too, and both drew `randperm(n)` from it (issue 54).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import nn
from torch.func import functional_call

from ..core.bounded import Refused, read_tensors
from ..core.errors import PoisonbenchError
from ..core.hashing import sha256_file
from ..core.io import atomic_write_bytes, ensure_writable, os_error_in_one_line, torch_load_tensors
from ..core.params import MAX_BATCH_SIZE, MAX_EPOCHS, Param
from ..core.seeds import attacker_seed
from ..core.workspace import workspace_dir
from ..engine.checkpoints import join_optimizer_state, read_state, split_optimizer_state, split_prefixed, write_state
from .base import Attack, AttackContext, batches
from .deepconfuse_nets import CLASSIFIERS, GENERATORS

# The budget schedule (default) and DC's official argparse defaults (DC:MNIST/train.py, CIFAR/train.py).
OFFICIAL = {"mnist": {"outer_epochs": 1000, "inner_epochs": 1, "batch_size": 64, "gen_lr": 1e-4, "cls_lr": 0.01},
            "cifar10": {"outer_epochs": 1000, "inner_epochs": 20, "batch_size": 256, "gen_lr": 1e-4,
                        "cls_lr": 0.01}}

MAX_OUTER_EPOCHS = 10_000  # --outer-epochs at most: 10× the official 1,000 (core.params, the bounds)
TRAIN = "train"  # the `generator` option's default: train one with the (budget or official) schedule
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def generator_path(results_root, family: str, sha256: str) -> Path:
    """Where an imported generator is kept: <results>/generators/deepconfuse-<family>-<sha256>.safetensors."""
    return workspace_dir(results_root, "generators") / f"deepconfuse-{family}-{sha256}.safetensors"


def import_generator(path, family: str, results_root=None) -> str:
    """Import a trained DeepConfuse generator's state dict (DC's own `.pt`/`.pth` files, read with
    `torch.load(weights_only=True)`, or a `.safetensors` file) into the workspace; returns the `generator`
    option value, "sha256:<hex of the file's bytes>" (what `sha256sum` prints for it).

    The weights must load strictly into the family's generator (MNIST: DC's autoencoder; CIFAR-10: DC's U-Net);
    they are stored as safetensors, so later crafts never unpickle anything."""
    if family not in GENERATORS:
        raise PoisonbenchError(f"no DeepConfuse generator for dataset family {family!r}")
    source = Path(path)
    try:
        sha256 = sha256_file(source)
    except OSError as e:
        raise PoisonbenchError(f"cannot read generator weights {str(source)!r}: {e.strerror or e}") from None
    target = generator_path(results_root, family, sha256)
    if target.exists():
        return f"sha256:{sha256}"
    try:
        if source.suffix == ".safetensors":
            state = read_tensors(source)
        else:
            state = torch_load_tensors(source)
    except Refused:  # a FIFO, over a bound: its own one line
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise PoisonbenchError(f"{str(source)!r} is not a state dict of tensors ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PoisonbenchError(f"{str(source)!r} is not a state dict of tensors")
    generator = GENERATORS[family]()  # the channels DC built it for: 1 (MNIST), 3 (CIFAR-10)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise PoisonbenchError(f"{str(source)!r} does not fit DeepConfuse's {family} generator "
                               f"({GENERATORS[family].__name__}): {first}") from None
    tensors = {k: v.detach().contiguous().clone() for k, v in generator.state_dict().items()}
    ensure_writable(target.parent, "imported generators")
    with os_error_in_one_line("the imported generator", target):
        atomic_write_bytes(target, st_save(tensors, metadata={"source_name": source.name, "source_sha256": sha256}))
    return f"sha256:{sha256}"


def load_generator(results_root, family: str, channels: int, generator: str, device) -> nn.Module:
    """The imported generator named by the `generator` option, in eval mode on `device`."""
    sha256 = generator.removeprefix("sha256:")
    path = generator_path(results_root, family, sha256)
    if not path.exists():
        raise PoisonbenchError(f"DeepConfuse generator {generator} is not in {path.parent}; import it with "
                               "`poisonbench craft --attack deepconfuse --generator-weights FILE`")
    model = GENERATORS[family](channels)
    try:
        model.load_state_dict(read_tensors(path))
    except Refused as e:
        raise PoisonbenchError(f"imported generator {e}; delete it and import the weights again") from None
    except Exception as e:  # noqa: BLE001 - a damaged store file (writes are atomic: a disk fault or an edit)
        raise PoisonbenchError(f"imported generator {str(path)!r} is unreadable ({type(e).__name__}); delete it "
                               "and import the weights again") from None
    return model.to(device).eval().requires_grad_(False)


class OuterCheckpoint:
    """The state after the last finished outer epoch (generator, its Adam state, the best generator so far, the
    RNG streams), so a killed craft resumes there and ends with exactly the generator of an uninterrupted one.
    One file in the craft's partial directory (keyed by the poison id), replaced atomically after every outer
    epoch, removed with the directory when the PoisonSet is saved."""

    def __init__(self, directory: Path | None):
        self.path = Path(directory) / "outer.safetensors" if directory is not None else None

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        opt_tensors, opt_meta = split_optimizer_state(state["gen_opt"])
        tensors = {f"tgt.{k}": v for k, v in state["tgt"].items()}
        tensors |= {f"best.{k}": v for k, v in state["best"].items()}
        tensors |= {f"opt.{k}": v for k, v in opt_tensors.items()}
        tensors |= {"rng": state["rng"], "rng_g": state["rng_g"]}
        meta = {"outer": str(state["outer"]), "done": str(state["done"]), "best_acc": repr(state["best_acc"]),
                "optimizer": json.dumps(opt_meta)}
        with os_error_in_one_line("an interrupted craft's state", self.path):
            write_state(self.path, tensors, meta)

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        tensors, meta = read_state(self.path)
        return {"outer": int(meta["outer"]), "done": int(meta["done"]), "best_acc": float(meta["best_acc"]),
                "tgt": split_prefixed(tensors, "tgt"), "best": split_prefixed(tensors, "best"),
                "gen_opt": join_optimizer_state(split_prefixed(tensors, "opt"), json.loads(meta["optimizer"])),
                "rng": tensors["rng"], "rng_g": tensors["rng_g"]}


def shuffled_batches(n: int, size: int, epochs: int, generator: torch.Generator, device):
    """Index batches of `size` over `epochs` fresh seeded permutations of range(n) (last batch may be short)."""
    for _ in range(epochs):
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, size):
            yield order[start:start + size]


class DeepConfuse(Attack):
    name = "deepconfuse"
    in_paper_mix = True
    summary = "Feng et al.: ε·tanh generator trained against a classifier with pseudo-updates"
    PARAMS = (
        Param("outer_epochs", int, {"mnist": 6, "cifar10": 2},
              "Outer epochs (generator snapshots). Budget default; official 1000.",
              "budget (official: DC train.py --epochs 1000)", minimum=1,
              maximum=MAX_OUTER_EPOCHS),
        Param("inner_epochs", int, {"mnist": 1, "cifar10": 1},
              "Classifier epochs per outer epoch (also the scratch-test length).",
              "DC MNIST --train-epoch 1; CIFAR --clsepochs 20 (budget: 1)", minimum=1,
              maximum=MAX_EPOCHS),
        Param("batch_size", int, {"mnist": 64, "cifar10": 256}, "Training batch.", "DC train.py --batch-size",
              minimum=1, maximum=MAX_BATCH_SIZE),
        Param("gen_lr", float, {"mnist": 1e-3, "cifar10": 1e-4}, "Generator Adam learning rate.",
              "DC train.py: Adam 1e-4 (budget MNIST: 1e-3)", positive=True),
        Param("cls_lr", float, {"mnist": 0.01, "cifar10": 0.01}, "Classifier SGD lr (also the pseudo-step lr).",
              "DC train.py --lr 0.01", positive=True),
        Param("official_schedule", bool, {"mnist": False, "cifar10": False},
              "Use DC's official schedule for the five options above that are not given explicitly "
              "(days of GPU time).",
              "DC train.py argparse defaults"),
        Param("generator", str, {"mnist": TRAIN, "cifar10": TRAIN},
              "A trained generator FILE (a state dict: DC's MNIST/pretrained/atkmnist_best.pt, or .safetensors) to "
              "make the poisons with instead of training one; imported into the workspace and named by its sha256 "
              "(the parameter's value `sha256:<hex>`; `train` without it).",
              "DC generate_adv_data.py (MNIST/pretrained/atkmnist_best.pt)", cli_flag="--generator-weights",
              from_file=import_generator,
              file_placeholder="sha256:" + "0" * 64),
    )

    def validate(self) -> None:
        generator = self.params["generator"]
        if generator == TRAIN:  # the default stays out of the poison id: PoisonSets crafted before the option
            del self.params["generator"]  # existed keep their ids (and the records on them their generation)
            if self.params["official_schedule"]:  # the official values replace the defaults, not explicit options
                self.params.update({k: v for k, v in OFFICIAL[self.family].items() if k not in self.explicit})
            return
        if not (isinstance(generator, str) and _SHA256.fullmatch(generator)):
            raise PoisonbenchError(f"the generator option of attack 'deepconfuse' must be {TRAIN!r} or "
                                   f"'sha256:<64 hex digits>' (set by --generator-weights FILE), got {generator!r}")
        trained = [k for k in OFFICIAL[self.family] if k in self.explicit]
        if trained or self.params["official_schedule"]:
            flags = ", ".join("--" + k.replace("_", "-") for k in trained) or "--official-schedule"
            raise PoisonbenchError(f"{flags}: training options of attack 'deepconfuse' do not apply to an "
                                   "imported generator")
        for k in (*OFFICIAL[self.family], "official_schedule"):
            self.params[k] = None  # nothing is trained: keep them out of the poison id

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # seeds module init without touching the caller's global RNG
            return self._perturb(ctx)

    def _perturb(self, ctx: AttackContext) -> torch.Tensor:
        p, device, eps = self.params, ctx.device, ctx.eps
        data = ctx.dataset
        c, h, _ = data.shape
        if p.get("generator", TRAIN) != TRAIN:
            generator = load_generator(ctx.results_root, self.family, c, p["generator"], device)
            self.training_summary = {"generator": p["generator"], "trained": False}
            return self._generate(generator, ctx)
        seed = attacker_seed("deepconfuse", {"seed": ctx.seed})  # apart from every victim's (poisonbench.core.seeds)
        torch.default_generator.manual_seed(seed)  # CPU only: fork_rng restores no CUDA generator
        g = torch.Generator(device=device).manual_seed(seed)
        make_cls = lambda: CLASSIFIERS[self.family](c, data.num_classes, h).to(device)  # noqa: E731
        tgt = GENERATORS[self.family](c).to(device)
        atk = copy.deepcopy(tgt).eval().requires_grad_(False)
        gen_opt = torch.optim.Adam(tgt.parameters(), lr=p["gen_lr"])
        x_all, y_all = ctx.train_tensors()
        n, bs = len(y_all), p["batch_size"]
        steps = (n + bs - 1) // bs
        total = p["outer_epochs"] * p["inner_epochs"] * steps * 2  # training + scratch test
        done = 0
        best_acc, best_state = float("inf"), copy.deepcopy(tgt.state_dict())
        description = f"deepconfuse · {data.name}"

        def poisoned(gen, x):
            with torch.no_grad():
                return (x + eps * gen(x)).clamp_(0, 1)

        checkpoint = OuterCheckpoint(ctx.partial_dir)
        first = 0
        state = checkpoint.load()
        if state is not None:  # resume after the last finished outer epoch of an interrupted craft
            first, done, best_acc = state["outer"], state["done"], state["best_acc"]
            tgt.load_state_dict(state["tgt"])
            atk.load_state_dict(state["tgt"])  # atk ← tgt closes every outer epoch
            best_state = state["best"]
            gen_opt.load_state_dict(state["gen_opt"])
            torch.set_rng_state(state["rng"])
            g.set_state(state["rng_g"])
        for outer in range(first, p["outer_epochs"]):
            cls = make_cls().train()
            cls_opt = torch.optim.SGD(cls.parameters(), lr=p["cls_lr"])
            for idx in shuffled_batches(n, bs, p["inner_epochs"], g, device):
                if len(idx) < 2:  # BatchNorm1d needs two rows
                    done += 1
                    ctx.report(description, done, total)
                    continue
                x, y = x_all[idx], y_all[idx]
                # 1. pseudo-update of the classifier on generator poisons, keeping the graph
                tgt.train()
                xp = (x + eps * tgt(x)).clamp(0, 1)
                params = dict(cls.named_parameters())
                loss = F.cross_entropy(cls(xp), y)
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                lr = cls_opt.param_groups[0]["lr"]
                fast = {k: v - lr * gk for (k, v), gk in zip(params.items(), grads, strict=True)}
                buffers = {k: b.clone() for k, b in cls.named_buffers()}
                # 2. generator step: maximise the clean loss of the pseudo-updated classifier
                loss2 = -F.cross_entropy(functional_call(cls, {**fast, **buffers}, (x,)), y)
                gen_opt.zero_grad(set_to_none=True)
                loss2.backward(inputs=list(tgt.parameters()))
                gen_opt.step()
                # 3. classifier step on the previous generator's poisons
                cls_opt.zero_grad(set_to_none=True)
                F.cross_entropy(cls(poisoned(atk, x)), y).backward()
                cls_opt.step()
                done += 1
                ctx.report(description, done, total)
            atk.load_state_dict(tgt.state_dict())
            # scratch test: a fresh classifier trained on atk's poisons, scored on the clean train split
            scratch = make_cls().train()
            opt = torch.optim.SGD(scratch.parameters(), lr=p["cls_lr"])
            for idx in shuffled_batches(n, bs, p["inner_epochs"], g, device):
                if len(idx) >= 2:
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(scratch(poisoned(atk, x_all[idx])), y_all[idx]).backward()
                    opt.step()
                done += 1
                ctx.report(description, done, total)
            scratch.eval()
            with torch.no_grad():
                correct = sum((scratch(x_all[a:b]).argmax(1) == y_all[a:b]).sum().item() for a, b in batches(n, 1000))
            acc = correct / n
            if acc < best_acc:
                best_acc, best_state = acc, copy.deepcopy(tgt.state_dict())
            checkpoint.save({"outer": outer + 1, "done": done, "best_acc": best_acc, "tgt": tgt.state_dict(),
                             "best": best_state, "gen_opt": gen_opt.state_dict(), "rng": torch.get_rng_state(),
                             "rng_g": g.get_state()})
        self.training_summary = {"best_scratch_clean_train_acc": best_acc}
        if first:
            self.training_summary["resumed_outer_epochs"] = first
        best = GENERATORS[self.family](c).to(device)
        best.load_state_dict(best_state)
        return self._generate(best.eval(), ctx)

    def _generate(self, generator: nn.Module, ctx: AttackContext) -> torch.Tensor:
        """δ = clamp(x + ε·G(x), 0, 1) − x for the poisoned rows, G in eval mode (DC generate_adv_data.py)."""
        x_all, _ = ctx.train_tensors()
        x_sel = x_all[ctx.indices.to(ctx.device)]
        out = []
        with torch.no_grad():
            for a, b in batches(len(x_sel), 1000):
                x = x_sel[a:b]
                out.append(((x + ctx.eps * generator(x)).clamp_(0, 1) - x).cpu())
        return torch.cat(out)
