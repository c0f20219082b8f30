"""The victim's architecture and, for a transfer victim, its frozen BatchNorm's mode, given the defense.

A defense that needs each example's gradient to be its own (`Defense.per_example`: DP-SGD, Abadi et al. 2016,
Algorithm 1) cannot train a BatchNorm in batch mode: its statistics mix the batch, so no per-example gradient and
no ε is what it claims (experiments/availability.md, "DP-SGD on a BatchNorm-free victim"). Such a defense
therefore trains, by default, the family's model with GroupNorm in place of BatchNorm (`BATCHNORM_FREE_MODEL`:
convnet-gn, resnet18-gn; Opacus's `ModuleValidator.fix` makes the same swap), refuses a model with BatchNorm in one
line, and on a transfer victim (a frozen pre-trained extractor and a new head) keeps the extractor's BatchNorm in
eval mode (`--head-bn eval`), where only the head, a linear layer on fixed features, trains: exactly per-example.
Every other defense keeps the family's default model (the paper's) and `--head-bn train` (HINT's code)."""

from __future__ import annotations

from ..core.errors import PoisonbenchError
from ..defenses import DEFENSES
from ..engine.models import BATCHNORM_FREE_MODEL, DEFAULT_MODEL, has_batchnorm

DEFAULT_HEAD_BN = "train"  # HINT:train_with_HIN_cifar10.py L76-89: extractor frozen, model.train() (docs/fidelity.md)
PER_EXAMPLE_HEAD_BN = "eval"


def per_example(method: str) -> bool:
    """Whether `method` needs each example's gradient to be its own (`Defense.per_example`)."""
    return bool(DEFENSES.get(method).per_example)  # every defense is a `Defense` (registry-checked)


def victim_model(model: str | None, method: str, dataset, transfer: bool = False) -> str:
    """The architecture a run of `method` trains: `model` if given, else the family's default (a per-example
    defense's: the BatchNorm-free one, except on a transfer victim, whose frozen extractor it keeps in eval mode).
    A per-example defense given a model with BatchNorm to train from scratch: the one-line refusal naming the
    BatchNorm-free models."""
    family = dataset.family
    if not per_example(method) or transfer:
        return model or DEFAULT_MODEL[family]
    if model is None:
        return BATCHNORM_FREE_MODEL[family]
    if has_batchnorm(model, dataset):
        choices = ", ".join(f"{name} ({fam})" for fam, name in BATCHNORM_FREE_MODEL.items())
        raise PoisonbenchError(f"--method {method} needs each example's gradient to be its own, which BatchNorm's "
                               f"batch statistics mix: --model {model} has BatchNorm; use a BatchNorm-free model: "
                               f"{choices}, or leave --model out")
    return model


def victim_head_bn(head_bn: str | None, method: str) -> str:
    """A transfer victim's frozen-extractor BatchNorm mode while its head trains: `head_bn` if given, else `train`
    (HINT's code), or `eval` for a per-example defense, which refuses `train` in one line."""
    if not per_example(method):
        return head_bn or DEFAULT_HEAD_BN
    if head_bn == "train":
        raise PoisonbenchError(f"--method {method} needs each example's gradient to be its own: --head-bn train "
                               "normalises the frozen extractor's features by the batch; use --head-bn eval (its "
                               "default for this method)")
    return head_bn or PER_EXAMPLE_HEAD_BN
