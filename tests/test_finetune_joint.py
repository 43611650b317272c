"""Joint A-SNN fine-tuning: factorization, loss terms and where their gradients go, write-back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

import snnconvert
from snnconvert import ir
from snnconvert.cli import main
from snnconvert.errors import DataError, OptionError
from snnconvert.finetune import FinetuneConfig, Trainer, finetune
from snnconvert.finetune.joint import kd
from snnconvert.runtime import SpikingNetwork
from test_finetune import _one_thread  # noqa: F401 (autouse fixture: one torch thread)
from test_finetune import _tiny as tiny_net
from test_finetune import crash_in_epoch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
T = 4


def _tiny() -> onnx.ModelProto:
    """test_finetune's tiny net with its first Gemm as transB=0, beta=0.5 (a layout and a bias
    gain that folding must respect): Conv -> IF -> AvgPool -> Flatten -> Gemm -> IF -> Gemm."""
    model = tiny_net()
    fc1 = next(n for n in model.graph.node if n.name == "fc1")
    del fc1.attribute[:]
    fc1.attribute.append(helper.make_attribute("beta", 0.5))
    ir.set_initializer(model, "w2", ir.get_initializer(model, "w2").T.copy())
    ir.set_initializer(model, "b2", ir.get_initializer(model, "b2") * 2.0)
    onnx.checker.check_model(model)
    return model


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.random.default_rng(seed).uniform(0, 1, (n, 2, 6, 6)).astype(np.float32)
    return torch.from_numpy(x), torch.arange(n) % 3


def _joint(**options) -> Trainer:
    return Trainer(_tiny(), FinetuneConfig(method="joint", timesteps=T, batch_size=32, **options))


@pytest.mark.parametrize("norm", ["frozen", "batch"])
def test_branches_start_as_the_converted_snn_and_its_rate_limit_ann(norm: str) -> None:
    model = _tiny()
    trainer = _joint(joint_norm=norm)
    joint, net = trainer.joint, trainer.net
    assert [(s.node, s.norm) for s in joint.synapses] == [("conv1", True), ("fc1", True), ("fc2", False)]
    assert joint.aux == ["if1"] and joint.taps == ["if1", "if2"]
    for syn in joint.synapses:
        f = joint.factors[syn.node]
        torch.testing.assert_close(f.weight("ann"), net.params[syn.weight], rtol=0, atol=1e-5)
        torch.testing.assert_close(f.s_ann, f.s_snn, rtol=0, atol=0)
    assert joint.factors["conv1"].u.shape == (3, 3, 4, 2)  # one SVD per kernel tap
    x, _ = _data()
    joint.calibrate(x)
    with torch.no_grad():
        reference = SpikingNetwork(model)(x, T)
        ann = joint._ann(x)
        for mode in (True, False):  # batch statistics of the calibration batch, then running ones
            joint.train(mode)
            torch.testing.assert_close(joint.snn_logits(x), reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ann.numpy(), snnconvert.api.ann_outputs(model, x.numpy()), rtol=1e-4, atol=1e-5)


def test_loss_terms_match_their_definitions() -> None:
    trainer = _joint()
    joint = trainer.joint
    x, y = _data()
    torch.manual_seed(0)
    terms, snn = joint.loss_terms(x, y, logit_scale=2.0)
    logits, features = joint(x)
    a_out, s_out = logits["ann"] * 2.0, logits["snn"] * 2.0
    torch.testing.assert_close(snn, s_out)
    ce_ann = F.cross_entropy(a_out, y) + F.cross_entropy(logits["ann:if1"], y)
    ce_snn = F.cross_entropy(s_out, y) + F.cross_entropy(logits["snn:if1"], y)
    torch.testing.assert_close(terms["ce_ann"], ce_ann)
    torch.testing.assert_close(terms["ce_snn"], ce_snn)

    def kl(student, teacher):  # KL(p_teacher || p_student) at temperature 3, batch mean
        p = F.softmax(teacher / 3, 1)
        return (p * (p.log() - F.log_softmax(student / 3, 1))).sum(1).mean()

    torch.testing.assert_close(kd(s_out, a_out, 3.0), kl(s_out, a_out))
    torch.testing.assert_close(terms["kd_ann"], kl(logits["ann:if1"], a_out))
    torch.testing.assert_close(terms["kd_snn"], kl(s_out, a_out) + kl(logits["snn:if1"], logits["ann:if1"]))
    feature = sum(((features[f"snn:{n}"] - features[f"ann:{n}"]) ** 2
                   * ((features[f"snn:{n}"] > 0) | (features[f"ann:{n}"] > 0))).sum() / len(x)
                  for n in ("if1", "if2"))
    torch.testing.assert_close(terms["feature"], feature)
    assert terms["feature"] > 0 and terms["kd_snn"] > 0 and terms["kd_ann"] > 0
    total = joint.combine(terms)
    expected = 0.9 * (ce_ann + ce_snn) + 0.1 * 9 * (terms["kd_ann"] + terms["kd_snn"]) + 1e-6 * feature
    torch.testing.assert_close(total, expected)


def _grads(trainer: Trainer, term: str) -> dict[str, bool]:
    """Which parameters the loss term alone gives a non-zero gradient."""
    joint, net = trainer.joint, trainer.net
    x, y = _data()
    joint.calibrate(x)
    for p in [*joint.parameters(), *net.params.values()]:
        p.grad = None
    terms, _ = joint.loss_terms(x, y)
    terms[term].backward()
    named = {f"joint.{k}": p for k, p in joint.named_parameters()}
    named.update({f"net.{k}": p for k, p in net.params.items()})
    return {k: p.grad is not None and bool(p.grad.abs().sum() > 0) for k, p in named.items()}


@pytest.mark.parametrize("term", ["ce_ann", "ce_snn", "kd_ann", "kd_snn", "feature"])
def test_each_loss_term_reaches_the_right_parameters(term: str) -> None:
    got = _grads(_joint(), term)
    has = lambda *keys: all(got[k] for k in keys)  # noqa: E731
    none = lambda *keys: not any(got[k] for k in keys)  # noqa: E731
    ann = [k for k in got if ".ann." in k or k.endswith("s_ann")]
    snn = [k for k in got if ".snn." in k or k.endswith("s_snn")]
    snn_only = ["net.if1__threshold", "net.if2__threshold", "net.if1__v_init", "net.if2__v_init"]
    # the IR's own copies of factorized weights and biases are deployment copies, never trained
    assert none("net.w1", "net.b1", "net.w2", "net.b2", "net.w3", "net.b3")
    shared = ["joint.factors.conv1.u", "joint.factors.conv1.v", "joint.factors.fc1.u", "joint.factors.fc1.v",
              "joint.biases.conv1", "joint.biases.fc1"]
    if term in ("ce_ann", "ce_snn", "kd_snn"):
        mine, other = (ann, snn + snn_only) if term == "ce_ann" else (snn, ann)
        assert has(*shared, "joint.factors.fc2.u", "joint.biases.fc2")
        assert has(*[k for k in mine if "fc2" not in k or "s_" in k]), [k for k in mine if not got[k]]
        assert none(*other), [k for k in other if got[k]]  # kd_snn: the ANN teacher is detached
        if term != "ce_ann":
            assert has(*snn_only)
    elif term == "kd_ann":  # aux ANN head <- final ANN (detached): only what feeds the aux head
        assert has("joint.factors.conv1.s_ann", "joint.norms.conv1.ann.gamma", "joint.heads.if1.ann.weight")
        assert none(*snn, *snn_only, "joint.factors.fc1.s_ann", "joint.factors.fc2.s_ann")
    else:  # feature loss pulls both branches' features together
        assert has("joint.factors.conv1.s_ann", "joint.factors.conv1.s_snn",
                   "joint.factors.fc1.s_ann", "joint.factors.fc1.s_snn", *shared)
        assert none("joint.heads.if1.ann.weight", "joint.heads.if1.snn.weight", "joint.factors.fc2.s_snn")


@pytest.mark.parametrize("norm", ["frozen", "batch", "none"])
def test_write_back_reproduces_the_snn_branch_spikes_and_logits(norm: str) -> None:
    trainer = _joint(lr=2e-2, joint_norm=norm)
    x, y = _data(96)
    for _ in range(3):
        trainer.run_epoch(x.numpy(), y.numpy())
    joint = trainer.joint
    joint.eval()
    net = trainer.net
    net.record = True
    try:
        with torch.no_grad():
            branch = joint.snn_logits(x)
        branch_counts = {k: v.clone() for k, v in net.spike_counts.items()}
    finally:
        net.record = False
    assert len(joint.norms) == (0 if norm == "none" else 2)
    tuned = trainer.export()
    assert not np.allclose(ir.get_initializer(tuned, "w2"), ir.get_initializer(_tiny(), "w2"), atol=1e-3)
    deployed = SpikingNetwork(tuned)
    result = deployed.simulate(x.numpy(), [T], record=True)
    for name, counts in branch_counts.items():
        np.testing.assert_array_equal(deployed.spike_counts[name].numpy(), counts.numpy())
    np.testing.assert_allclose(result.readout[T], branch.numpy(), rtol=1e-5, atol=1e-5)
    assert branch_counts["if1"].sum() > 0 and branch_counts["if2"].sum() > 0


def test_joint_loss_decreases_over_a_few_steps() -> None:
    trainer = _joint(lr=1e-2)
    x, _ = _data(64, seed=4)
    y = torch.bucketize(x[:, 0, :3].mean((1, 2)) - x[:, 1, 3:].mean((1, 2)), torch.tensor([-0.05, 0.05]))
    joint = trainer.joint
    losses = []
    for _ in range(30):
        terms, _ = joint.loss_terms(x, y)
        loss = joint.combine(terms)
        trainer.opt.zero_grad()
        loss.backward()
        trainer.opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 25, losses


def test_joint_finetune_on_digits_and_cli(tmp_path) -> None:
    with np.load(FIXTURES / "digits.npz") as d:
        digits = dict(d)
    x, y = digits["x_train"][:384], digits["y_train"][:384]
    snn = snnconvert.convert(FIXTURES / "digits_cnn.onnx", x[:300], timesteps=T, calibration="none")

    def loss(model):
        with torch.no_grad():
            return float(F.cross_entropy(SpikingNetwork(model)(torch.from_numpy(x), T), torch.from_numpy(y)))

    tuned, history = finetune(snn, x, y, digits["x_test"][:200], digits["y_test"][:200], method="joint",
                              timesteps=T, epochs=2, lr=1e-3, batch_size=64)
    assert loss(tuned) < 0.8 * loss(snn)
    assert history.epochs[-1].val_accuracy >= history.initial_val_accuracy - 0.01
    assert json.loads(ir.get_meta(tuned, "finetune"))["method"] == "joint"
    with pytest.raises(OptionError, match="sharpen"):
        finetune(snn, x, y, method="joint", sharpen_epochs=1)
    with pytest.raises(OptionError, match="unknown joint_norm 'group'"):
        finetune(snn, x, y, method="joint", joint_norm="group")
    model, data, out = tmp_path / "d.snn.onnx", tmp_path / "train.npz", tmp_path / "t.snn.onnx"
    ir.save(snn, model)
    np.savez(data, x=x[:128], y=y[:128])
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(model), "--data", str(data), "--method", "joint", "-T", "2", "--epochs", "1",
              "--joint-norm", "batch", "--joint-branches", "1", "-o", str(out)])
    assert exit_info.value.code == 0 and json.loads(ir.get_meta(ir.load(out), "finetune"))["method"] == "joint"


def test_joint_checkpoint_resumes_to_the_same_network(tmp_path, monkeypatch) -> None:
    """Factors, singular values, norms and heads are in the checkpoint: an interrupted joint run
    resumed from it ends where the straight run does; a bptt checkpoint is refused."""
    x, y = _data(96, seed=2)
    x, y = x.numpy(), y.numpy()
    common = dict(method="joint", timesteps=T, epochs=3, batch_size=32, lr=1e-2, joint_norm="batch")
    straight, _ = finetune(_tiny(), x, y, **common)
    ck = tmp_path / "joint.ckpt"
    with crash_in_epoch(monkeypatch, 2):
        finetune(_tiny(), x, y, checkpoint=ck, **common)
    resumed, history = finetune(_tiny(), x, y, checkpoint=ck, resume=ck, **common)
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    for a, b in zip(straight.graph.initializer, resumed.graph.initializer):
        np.testing.assert_allclose(ir.get_initializer(straight, a.name), ir.get_initializer(resumed, b.name),
                                   rtol=1e-6, atol=1e-7)
    bptt_ck = tmp_path / "bptt.ckpt"
    finetune(_tiny(), x, y, timesteps=T, epochs=1, checkpoint=bptt_ck)
    with pytest.raises(DataError, match="another --method"):
        finetune(_tiny(), x, y, resume=bptt_ck, **common)
