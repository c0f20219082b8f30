"""The victim a defense trains (`experiment/victims.py`): a per-example defense (DP-SGD) gets the family's
BatchNorm-free model by default, is refused a BatchNorm one in one line (nothing written), and keeps a transfer
victim's frozen BatchNorm in eval mode; every other defense keeps the paper's model and `--head-bn train`. And the
BatchNorm-free ResNet-18 itself."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES
from poisonbench.defenses.dpsgd import hookable, trainable
from poisonbench.engine.models import BATCHNORM_FREE_MODEL, MODELS, build_model, has_batchnorm
from poisonbench.experiment.victims import per_example, victim_head_bn, victim_model

from .conftest import files_under, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
REFUSAL = ("--method dpsgd needs each example's gradient to be its own, which BatchNorm's batch statistics mix: "
           "--model {model} has BatchNorm; use a BatchNorm-free model: convnet-gn (mnist), resnet18-gn (cifar10), "
           "or leave --model out")


class Family:
    def __init__(self, family: str, shape=(1, 28, 28)):
        self.family, self.shape, self.num_classes = family, shape, 10


def test_only_dpsgd_is_a_per_example_defense():
    assert [name for name in DEFENSES.names() if per_example(name)] == ["dpsgd"]


@pytest.mark.parametrize("family, shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_each_family_has_a_batchnorm_free_default_and_other_defenses_keep_the_papers(family, shape):
    data = Family(family, shape)
    free = BATCHNORM_FREE_MODEL[family]
    assert victim_model(None, "dpsgd", data) == free and not has_batchnorm(free, data)
    paper = victim_model(None, "none", data)
    assert paper == {"mnist": "convnet", "cifar10": "resnet18"}[family] and has_batchnorm(paper, data)
    for method in DEFENSES.names():
        if method != "dpsgd":
            assert victim_model(None, method, data) == paper
            assert victim_model(free, method, data) == free  # a given model is every defense's
    assert victim_model(None, "dpsgd", data, transfer=True) == paper  # the frozen extractor, in eval mode


@pytest.mark.parametrize("model", ["convnet", "resnet18"])
def test_dpsgd_refuses_every_model_with_batchnorm_in_one_line(model):
    with pytest.raises(PoisonbenchError) as info:
        victim_model(model, "dpsgd", Family("mnist"))
    assert str(info.value) == REFUSAL.format(model=model)
    for free in BATCHNORM_FREE_MODEL.values():
        assert victim_model(free, "dpsgd", Family("mnist")) == free


def test_a_transfer_victims_head_bn_is_eval_for_dpsgd_and_train_for_the_rest():
    assert victim_head_bn(None, "dpsgd") == "eval" and victim_head_bn("eval", "dpsgd") == "eval"
    with pytest.raises(PoisonbenchError) as info:
        victim_head_bn("train", "dpsgd")
    assert str(info.value) == ("--method dpsgd needs each example's gradient to be its own: --head-bn train "
                               "normalises the frozen extractor's features by the batch; use --head-bn eval (its "
                               "default for this method)")
    for method in DEFENSES.names():
        if method != "dpsgd":
            assert victim_head_bn(None, method) == "train"
            assert victim_head_bn("eval", method) == "eval" and victim_head_bn("train", method) == "train"


def test_has_batchnorm_leaves_the_global_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert has_batchnorm("resnet18", Family("cifar10", (3, 32, 32)))
    assert torch.equal(torch.rand(3), expected)


def test_the_batchnorm_free_resnet18_is_resnet18_with_opacus_groupnorm():
    """The same parameter shapes and initial convolution and head weights for one seed; every BatchNorm a
    GroupNorm of gcd(32, channels) groups; the layer hooks of DP-SGD read it."""
    data = load_dataset("mnist-5k")
    bn, gn = build_model("resnet18", data, seed=2), build_model("resnet18-gn", data, seed=2)
    assert [(n, p.shape) for n, p in bn.named_parameters()] == [(n, p.shape) for n, p in gn.named_parameters()]
    for (name, a), (_, b) in zip(bn.named_parameters(), gn.named_parameters(), strict=True):
        if a.dim() > 1:  # convolutions and the head: the same draws
            assert torch.equal(a, b), name
    norms = [m for m in gn.modules() if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm))]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 20
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in norms)
    assert "resnet18-gn" in MODELS.names()
    assert hookable(gn, {n: p.detach() for n, p in trainable(gn).items()})


def test_defend_dpsgd_without_a_model_trains_convnet_gn(cli, tiny_npz, tmp_path):
    code, _, err = cli("defend", "--method", "dpsgd", "--recipe", "quick", "--epochs", "1", "--compile", "off",
                       "--dataset", tiny_npz, "--results", tmp_path / "r", "--json")
    assert code == 0, err
    (path,) = (tmp_path / "r" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["config"]["model"] == "convnet-gn"
    assert record["defense"]["batchnorm"] == "none (no BatchNorm in training mode)"
    assert record["defense"]["accounting"]["epsilon_note"].endswith("not a proven bound for shuffling (Chua et al. "
                                                                    "2024); --sampling poisson for one that holds")


def test_defend_dpsgd_on_a_batchnorm_model_is_refused_and_writes_nothing(cli, tiny_npz, tmp_path):
    code, _, err = cli("defend", "--method", "dpsgd", "--model", "convnet", "--recipe", "quick", "--epochs", "1",
                       "--compile", "off", "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, REFUSAL.format(model="convnet"))
    assert files_under(tmp_path / "r") == []
