"""Stage 2 (closed-loop RSC training): min-norm solve, reward-penalty loss, gradient flow,
a two-task run on generated pairs, resuming and the ``cldyn train rsc`` command."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml
from helpers import activate_rsc
from torch import nn

from cldyn_ros.cli import main
from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs
from cldyn_ros.inference.checkpoint import load_checkpoint, save_checkpoint
from cldyn_ros.model import CLDyN, CLDyNConfig
from cldyn_ros.training.datasets import read_pairs, self_supervised
from cldyn_ros.training.losses import FusionLoss
from cldyn_ros.training.mingrad import cagrad, cagrad_objective, project_simplex
from cldyn_ros.training.rsc import (
    Loop,
    RSCTrainConfig,
    Task,
    fidelity_loss,
    reward_penalty,
    train_rsc,
    train_step,
)
from cldyn_ros.training.task_networks import LOSSES, SmallSegNet, TaskNetwork

TINY = {"task_dim": 16, "embed_dim": 16, "bank_size": 4, "basis_dim": 32, "kernel_hidden": 8}
FACTORY = "cldyn_ros.training.task_networks:SmallSegNet"


def tiny_model(seed: int = 0, active: bool = False) -> CLDyN:
    torch.manual_seed(seed)
    model = CLDyN(CLDyNConfig(**TINY))
    return activate_rsc(model, seed, std=0.5) if active else model


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    write_pairs(generate_pairs(5, seed=3, height=48, width=64, conditions=("day", "night")),
                root)
    return root


def tasks_on(root: Path, seed: int = 10) -> list[Task]:
    items = read_pairs(root / "ir", root / "vi")
    tasks = []
    for i, label in enumerate(("warm_objects", "visible_edges")):
        torch.manual_seed(seed + i)
        net = TaskNetwork(label, SmallSegNet(width=4, feature_channels=8), "body", "bce")
        tasks.append(Task(net, self_supervised(label, items, 0.0),
                          self_supervised(label, items[:2], 0.0)))
    return tasks


# --- min-norm (CAGrad) solve ---------------------------------------------------------------


def test_project_simplex_is_the_euclidean_projection() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = torch.randn(4, generator=gen, dtype=torch.float64) * 2
        w = project_simplex(v)
        assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-12
        # Optimality: no other simplex point (grid) is closer to v.
        grid = torch.tensor([p for p in itertools.product(range(11), repeat=4) if sum(p) == 10],
                            dtype=torch.float64) / 10
        assert (v - w).norm() <= (grid - v).norm(dim=1).min() + 1e-12


def brute_force_weights(gram: torch.Tensor, c: float, steps: int = 60) -> torch.Tensor:
    """Grid search over the simplex, then three rounds of a finer grid around the best."""
    n = gram.shape[0]
    grid = torch.tensor([p for p in itertools.product(range(steps + 1), repeat=n)
                         if sum(p) == steps], dtype=torch.float64) / steps
    width = 1.0
    for _ in range(4):
        values = torch.stack([cagrad_objective(x, gram, c) for x in grid])
        best = grid[values.argmin()]
        width = 2.0 * width / steps
        offsets = torch.tensor(list(itertools.product(range(-10, 11), repeat=n - 1)),
                               dtype=torch.float64) * width / 10
        grid = best[:-1] + offsets
        grid = torch.cat([grid, 1 - grid.sum(1, keepdim=True)], 1)
        grid = torch.cat([grid[(grid >= 0).all(1)], best[None]])
    return best


@pytest.mark.parametrize("n", [2, 3])
def test_cagrad_matches_brute_force_on_small_random_gradients(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    c = 0.5
    for trial in range(6):
        grads = torch.randn(n, 7, generator=gen, dtype=torch.float64)
        if trial % 2:  # conflicting gradients
            grads[1] = -0.8 * grads[0] + 0.3 * torch.randn(7, generator=gen, dtype=torch.float64)
        gram = grads @ grads.t()
        update, w = cagrad(grads, c, rescale=False)
        best = brute_force_weights(gram, c)
        assert float(cagrad_objective(w, gram, c)) <= float(cagrad_objective(best, gram, c)) + 1e-9
        g0 = grads.mean(0)
        gb = best @ grads
        brute = g0 + c * g0.norm() / gb.norm() * gb
        assert torch.allclose(update, brute, atol=1e-3 * float(brute.norm()))
        # The update stays in the ball of radius c |g0| around g0.
        assert float((update - g0).norm()) <= c * float(g0.norm()) + 1e-9


def test_cagrad_edge_cases() -> None:
    g = torch.randn(3, 5)
    update, w = cagrad(g, 0.0)
    assert torch.allclose(update, g.mean(0), atol=1e-6)
    update, w = cagrad(g[:1], 0.5, rescale=False)
    assert torch.allclose(update, g[0] * 1.5, atol=1e-5)
    zero, _ = cagrad(torch.zeros(2, 4), 0.5)
    assert torch.equal(zero, torch.zeros(4))
    with pytest.raises(ValueError):
        cagrad(torch.zeros(4), 0.5)


# --- reward-penalty loss and gradient flow -------------------------------------------------


def test_penalty_zero_when_compensation_does_not_hurt_positive_when_it_does() -> None:
    before = torch.tensor(1.0)
    for after_value, hurts in ((0.7, False), (1.0, False), (1.3, True)):
        after = torch.tensor(after_value, requires_grad=True)
        loss, l_p = reward_penalty(after, before, 5.0)
        loss.backward()
        if hurts:
            assert float(l_p.detach()) == pytest.approx(0.3)
            assert float(after.grad) == pytest.approx(6.0)
        else:
            assert float(l_p.detach()) == 0.0
            assert float(after.grad) == pytest.approx(1.0)


class MeanTask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_penalty_in_a_training_step_follows_whether_compensation_hurts(pairs_dir: Path) -> None:
    """Two tasks on the same data that want opposite things ('brighter' / 'darker' output):
    whatever compensation does, it helps one (penalty 0) and hurts the other (penalty > 0)."""
    items = read_pairs(pairs_dir / "ir", pairs_dir / "vi")
    data = self_supervised("warm_objects", items, 0.0)
    torch.manual_seed(0)
    shared = MeanTask()
    nets = [TaskNetwork("brighter", shared, "conv", lambda out, t: -out.mean()),
            TaskNetwork("darker", shared, "conv", lambda out, t: out.mean())]
    loop = Loop(tiny_model(active=True), [Task(n, data) for n in nets], torch.device("cpu"))
    loop.train()
    batch = data.batch(2, 32, torch.Generator().manual_seed(0))
    stats = train_step(loop, [batch, batch], RSCTrainConfig(vfn="", out=""), None)
    b, d = stats["brighter"], stats["darker"]
    assert b["after"] != pytest.approx(b["before"], abs=1e-7)
    helped, hurt = (b, d) if b["after"] < b["before"] else (d, b)
    assert helped["penalty"] == 0.0
    assert hurt["penalty"] == pytest.approx(hurt["after"] - hurt["before"], rel=1e-4)
    assert hurt["penalty"] > 0


def test_gradient_reaches_every_trainable_parameter_and_no_frozen_one(pairs_dir: Path) -> None:
    tasks = tasks_on(pairs_dir)
    loop = Loop(tiny_model(active=True), tasks, torch.device("cpu"))
    loop.train()
    gen = torch.Generator().manual_seed(0)
    batches = [t.train.batch(2, 32, gen) for t in tasks]
    train_step(loop, batches, RSCTrainConfig(vfn="", out=""), None)
    trainable = loop.trainable()
    assert len(trainable) == len(list(loop.model.rsc.parameters())) + len(
        list(loop.adapters.parameters()))
    names = {id(p): n for n, p in loop.named_parameters()}
    for p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, names[id(p)]
    for p in loop.model.vfn.parameters():
        assert not p.requires_grad and p.grad is None
    for t in tasks:
        for p in t.network.module.parameters():
            assert not p.requires_grad and p.grad is None
        assert not t.network.module.training


def test_fidelity_term_adds_the_fusion_loss_gradient(pairs_dir: Path, tmp_path: Path) -> None:
    tasks = tasks_on(pairs_dir)
    gen_batches = [t.train.batch(2, 32, torch.Generator().manual_seed(0)) for t in tasks]
    grads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        loop = Loop(tiny_model(active=True), tasks, torch.device("cpu"),
                    FusionLoss(qabf_weight=1.0, ssim_weight=0.5) if weight else None)
        loop.train()
        stats = train_step(loop, gen_batches, RSCTrainConfig(vfn="", out="",
                                                             fidelity_weight=weight), None)
        grads[weight] = torch.cat([p.grad.flatten() for p in loop.trainable()])
        if weight:
            for t in tasks:
                s = stats[t.name]
                assert s["fidelity_after"] > 0 and s["fidelity_before"] > 0
                assert s["fidelity_after"] != s["fidelity_before"]  # active RSC: not identity
    assert not torch.allclose(grads[0.0], grads[1.0])
    # the fusion loss comes from the VFN checkpoint's own training metadata
    vfn = tmp_path / "vfn.pt"
    save_checkpoint(vfn, tiny_model(), {}, {"training": {"stage": "vfn", "qabf_weight": 2.0,
                                                         "intensity_weight": 0.0}})
    loss = fidelity_loss(RSCTrainConfig(vfn=str(vfn), out="", fidelity_weight=1.0,
                                        fidelity={"ssim_weight": 0.25}))
    assert (loss.qabf_weight, loss.intensity_weight, loss.ssim_weight) == (2.0, 0.0, 0.25)
    assert fidelity_loss(RSCTrainConfig(vfn=str(vfn), out="")) is None
    with pytest.raises(ValueError, match="unknown fidelity settings"):
        fidelity_loss(RSCTrainConfig(vfn=str(vfn), out="", fidelity_weight=1.0,
                                     fidelity={"edge_weight": 1.0}))


def test_relative_losses_make_the_update_independent_of_each_task_loss_scale(
        pairs_dir: Path) -> None:
    """With ``relative`` a task whose loss is 100 x larger (same network) gives the same
    update; without it the update changes."""
    items = read_pairs(pairs_dir / "ir", pairs_dir / "vi")
    batches = None
    updates = {}
    for relative, scale in itertools.product((False, True), (1.0, 100.0)):
        tasks = []
        for i, label in enumerate(("warm_objects", "visible_edges")):
            torch.manual_seed(10 + i)
            factor = scale if i == 0 else 1.0
            net = TaskNetwork(label, SmallSegNet(width=4, feature_channels=8), "body",
                              lambda out, t, f=factor: f * LOSSES["bce"](out, t))
            tasks.append(Task(net, self_supervised(label, items, 0.0)))
        if batches is None:
            gen = torch.Generator().manual_seed(0)
            batches = [t.train.batch(2, 32, gen) for t in tasks]
        torch.manual_seed(0)
        loop = Loop(tiny_model(active=True), tasks, torch.device("cpu"),
                    FusionLoss(qabf_weight=1.0, ssim_weight=0.5))
        loop.train()
        torch.manual_seed(1)  # same Gumbel exploration noise in every run
        train_step(loop, batches, RSCTrainConfig(vfn="", out="", fidelity_weight=1.0,
                                                 relative=relative, clip=1e9), None)
        updates[relative, scale] = torch.cat([p.grad.flatten() for p in loop.trainable()])
    torch.testing.assert_close(updates[True, 1.0], updates[True, 100.0], rtol=1e-3, atol=1e-6)
    assert not torch.allclose(updates[False, 1.0], updates[False, 100.0], rtol=1e-2)


# --- training runs -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_task_run_on_generated_pairs_lowers_both_losses_and_resumes(
    pairs_dir: Path, tmp_path: Path
) -> None:
    tasks = tasks_on(pairs_dir)
    out = tmp_path / "rsc.pt"
    config = RSCTrainConfig(vfn="", out=str(out), steps=24, batch_size=2, crop=32,
                            eval_every=12, checkpoint_every=12, vector_batches=2)
    vfn_before = {k: v.clone() for k, v in tiny_model().vfn.state_dict().items()}
    summary = train_rsc(config, tasks, progress=False, model=tiny_model())
    for name in ("warm_objects", "visible_edges"):
        v = summary["validation"][name]
        assert v["after"] < v["before"], (name, v)
    loaded = load_checkpoint(out)
    assert loaded.task_names == ["visible_edges", "warm_objects"]
    for k, v in loaded.model.vfn.state_dict().items():
        assert torch.equal(v, vfn_before[k]), f"VFN changed: {k}"
    meta = loaded.metadata
    assert meta["training"]["stage"] == "rsc" and meta["training"]["steps"] == 24
    assert meta["tasks"]["warm_objects"]["feature_layer"] == "body"
    assert "mean adapter output" in meta["tasks"]["warm_objects"]["vector"]
    log = (tmp_path / "rsc.train.csv").read_text().splitlines()
    assert len(log) == 3 and "warm_objects/val_after" in log[0]
    # Resume: the same command with more steps continues from the state file.
    config.steps = 26
    summary = train_rsc(config, tasks_on(pairs_dir), progress=False, model=tiny_model())
    assert summary["steps"] == 26 and len(summary["history"]) == 3


def test_cli_train_rsc_from_a_tasks_file(pairs_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    vfn = tmp_path / "vfn.pt"
    save_checkpoint(vfn, CLDyN(CLDyNConfig(with_rsc=False)), {}, {"trained_on": "test"})
    weights = tmp_path / "warm.pt"
    torch.save(SmallSegNet(width=4, feature_channels=8).state_dict(), weights)
    spec = {
        "rsc": TINY, "steps": 2, "batch_size": 1, "crop": 24, "eval_every": 2,
        "vector_batches": 1,
        "tasks": [{
            "name": "warm",
            "network": {"adapter": "import", "factory": FACTORY,
                        "kwargs": {"width": 4, "feature_channels": 8}, "weights": "warm.pt",
                        "feature_layer": "body", "loss": "bce"},
            "data": {"layout": "self-supervised", "labels": "warm_objects",
                     "ir": str(pairs_dir / "ir"), "vi": str(pairs_dir / "vi")},
        }],
    }
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out.pt"
    base = ["train", "rsc", "--tasks", str(tasks), "--vfn", str(vfn), "--out", str(out),
            "--no-progress"]
    assert main(base) == 0
    loaded = load_checkpoint(out)
    assert loaded.task_names == ["warm"] and loaded.model.config.task_dim == TINY["task_dim"]
    assert loaded.metadata["tasks"]["warm"]["network"]["factory"] == FACTORY
    assert "trained 2 steps" in capsys.readouterr().out

    spec["tasks"][0]["network"]["feature_layer"] = "bodyy"
    tasks.write_text(yaml.safe_dump(spec))
    assert main([*base[:-2], str(tmp_path / "other.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no layer 'bodyy'" in err and "body" in err



def test_bf16_step_runs_and_stays_finite(pairs_dir: Path) -> None:
    tasks = tasks_on(pairs_dir)
    loop = Loop(tiny_model(active=True), tasks, torch.device("cpu"))
    loop.train()
    gen = torch.Generator().manual_seed(0)
    batches = [t.train.batch(2, 32, gen) for t in tasks]
    params = loop.trainable()
    optim = torch.optim.Adam(params, lr=1e-2)
    stats = train_step(loop, batches, RSCTrainConfig(vfn="", out="", precision="bf16"), optim)
    for t in tasks:
        assert all(torch.isfinite(torch.tensor(stats[t.name][k]))
                   for k in ("before", "after", "penalty"))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    assert stats["_grad_norm"] > 0
    with pytest.raises(ValueError, match="precision"):
        RSCTrainConfig(vfn="", out="", precision="fp16")
