"""The CLDyN network: VFN, RSC (bank + A2SI), colour conversion and the stage-1 loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_model, random_inputs, task_vectors

from cldyn_ros.inference.fast import inference_copy
from cldyn_ros.model import (
    A2SI,
    RSC,
    VFN,
    CLDyN,
    CLDyNConfig,
    count_parameters,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from cldyn_ros.model.layers import box_mean, sobel_magnitude
from cldyn_ros.model.rsc import (
    CONFIGURATIONS,
    KernelPredictors,
    dynamic_conv,
    hadamard_prototypes,
    straight_through,
)
from cldyn_ros.training.losses import FusionLoss

ODD_SIZES = [(17, 23), (31, 45)]


def _tasks(count: int = 2, seed: int = 0) -> torch.Tensor:
    names = tuple(f"task{i}" for i in range(count))
    return torch.stack(list(task_vectors(names, seed=seed).values()))


# ------------------------------------------------------------------ parameter counts


def test_vfn_has_exactly_34761_trainable_parameters():
    assert count_parameters(VFN(num_blocks=2)) == 34_761


def test_cldyn_default_vfn_matches_standalone_vfn_count():
    assert count_parameters(CLDyN().vfn) == 34_761


def test_rsc_parameter_count_is_the_documented_458704():
    assert count_parameters(RSC(num_blocks=2)) == 458_704


def test_rsc_parameter_count_within_10_percent_of_paper():
    assert abs(count_parameters(RSC(num_blocks=2)) - 462_824) / 462_824 < 0.10


def test_count_parameters_ignores_frozen_and_none():
    model = CLDyN(CLDyNConfig(with_rsc=True))
    model.vfn.requires_grad_(False)
    assert count_parameters(model) == count_parameters(model.rsc)
    assert count_parameters(None) == 0


def test_without_rsc_model_has_no_rsc():
    model = CLDyN(CLDyNConfig(with_rsc=False))
    assert model.rsc is None
    assert count_parameters(model) == 34_761


# ------------------------------------------------------------------ configurable L and M


def test_num_blocks_3_gives_two_a2si_blocks_per_modality():
    model = make_model(num_blocks=3)
    assert len(model.rsc.blocks_ir) == 2
    assert len(model.rsc.blocks_vis) == 2
    assert len(model.vfn.encoder_ir.blocks) == 3


def test_num_blocks_3_fuses_with_every_block_active():
    model = make_model(num_blocks=3)
    ir, vis = random_inputs(1, 24, 32)
    with torch.no_grad():
        plain = model(ir, vis)
        out = model.fuse_tasks(ir, vis, _tasks(2))
    assert out.shape == (2, 1, 1, 24, 32)
    assert (out - plain).abs().max() > 0


def test_two_branches_work():
    model = make_model(branches=2)
    assert model.rsc.blocks_ir[0].branches == 2
    ir, vis = random_inputs(2, 24, 32)
    with torch.no_grad():
        out = model.fuse_tasks(ir, vis, _tasks(1))
    assert out.shape == (1, 2, 1, 24, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "settings",
    [{"num_blocks": 0}, {"num_blocks": 1, "with_rsc": True}, {"branches": 0}],
)
def test_config_rejects_invalid_settings(settings):
    with pytest.raises(ValueError):
        CLDyNConfig(**settings)


def test_config_without_rsc_allows_one_block():
    model = CLDyN(CLDyNConfig(num_blocks=1, with_rsc=False))
    ir, vis = random_inputs(1, 17, 23)
    assert model.eval()(ir, vis).shape == (1, 1, 17, 23)


def test_config_dict_round_trip_and_unknown_key():
    config = CLDyNConfig(num_blocks=3, branches=2)
    assert CLDyNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus"):
        CLDyNConfig.from_dict({**config.to_dict(), "bogus": 1})


# ------------------------------------------------------------------ shapes and determinism


@pytest.mark.parametrize(("h", "w"), ODD_SIZES)
def test_plain_fusion_shape_and_range_for_odd_sizes(h, w):
    model = make_model()
    ir, vis = random_inputs(2, h, w)
    with torch.no_grad():
        out = model(ir, vis)
    assert out.shape == (2, 1, h, w)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(("h", "w"), ODD_SIZES)
def test_compensated_fusion_shape_and_range_for_odd_sizes(h, w):
    model = make_model()
    ir, vis = random_inputs(2, h, w)
    with torch.no_grad():
        out = model.fuse_tasks(ir, vis, _tasks(3))
    assert out.shape == (3, 2, 1, h, w)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_plain_fusion_is_bit_for_bit_deterministic():
    model = make_model()
    ir, vis = random_inputs(2, 24, 32)
    with torch.no_grad():
        assert torch.equal(model(ir, vis), model(ir, vis))


def test_compensated_fusion_is_bit_for_bit_deterministic():
    model = make_model()
    ir, vis = random_inputs(2, 24, 32)
    tasks = _tasks(2)
    with torch.no_grad():
        first = model.fuse_tasks(ir, vis, tasks)
        second = model.fuse_tasks(ir, vis, tasks)
    assert torch.equal(first, second)


def test_same_seed_builds_identical_models():
    a, b = make_model(seed=3), make_model(seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


# ------------------------------------------------------------------ task batching


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fresh_rsc_gives_exactly_the_vfn_output(seed):
    model = make_model(active=False)
    ir, vis = random_inputs(2, 17, 23, seed=seed)
    with torch.no_grad():
        plain = model(ir, vis)
        out = model.fuse_tasks(ir, vis, _tasks(3, seed=seed) * (seed + 1))
    for t in range(3):
        assert torch.equal(out[t], plain)


def test_strength_zero_gives_exactly_the_vfn_output():
    model = make_model()
    ir, vis = random_inputs(1, 24, 32)
    with torch.no_grad():
        plain = model(ir, vis)
        out = model.fuse_tasks(ir, vis, _tasks(1), 0.0)
    assert torch.equal(out[0], plain)


def test_strength_applies_per_task():
    """Batched with another task the result may differ from the batch-1 VFN in the last
    bit (convolution numerics depend on the batch size), not more."""
    model = make_model()
    ir, vis = random_inputs(1, 24, 32)
    with torch.no_grad():
        plain = model(ir, vis)
        out = model.fuse_tasks(ir, vis, _tasks(2), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out[0], plain, atol=1e-6, rtol=0)
    assert (out[1] - plain).abs().max() > 1e-4


def test_active_rsc_changes_the_output_per_task():
    model = make_model()
    ir, vis = random_inputs(1, 24, 32)
    with torch.no_grad():
        plain = model(ir, vis)
        out = model.fuse_tasks(ir, vis, _tasks(2))
    assert (out[0] - plain).abs().mean() > 1e-4
    assert (out[0] - out[1]).abs().mean() > 1e-4


def test_fuse_tasks_equals_separate_single_task_calls():
    model = make_model()
    ir, vis = random_inputs(2, 17, 23)
    tasks = _tasks(3)
    strengths = torch.tensor([1.0, 0.5, 0.25])
    with torch.no_grad():
        together = model.fuse_tasks(ir, vis, tasks, strengths)
        for t in range(3):
            alone = model.fuse_tasks(ir, vis, tasks[t : t + 1], strengths[t : t + 1])
            torch.testing.assert_close(together[t], alone[0], atol=1e-5, rtol=0)


def test_fuse_per_sample_agrees_with_fuse_tasks():
    model = make_model()
    ir, vis = random_inputs(2, 17, 23)
    tasks = _tasks(3)
    with torch.no_grad():
        together = model.fuse_tasks(ir, vis, tasks, 0.7)
        per_sample = model.fuse_per_sample(
            ir.repeat(3, 1, 1, 1), vis.repeat(3, 1, 1, 1), tasks.repeat_interleave(2, dim=0), 0.7
        )
    torch.testing.assert_close(per_sample.view(3, 2, 1, 17, 23), together, atol=1e-5, rtol=0)


def test_fuse_tasks_without_rsc_raises():
    model = make_model(with_rsc=False)
    ir, vis = random_inputs(1, 17, 23)
    with pytest.raises(RuntimeError, match="no RSC"):
        model.fuse_tasks(ir, vis, _tasks(1))


# ------------------------------------------------------------------ training (stage 2)


def _training_step(model: CLDyN, monkeypatch) -> set[int]:
    """Freeze the VFN, run one fuse_per_sample training step, return the configurations
    the A2SI blocks chose."""
    chosen: set[int] = set()
    select = A2SI.select

    def recording_select(self, *args, **kwargs):
        gates, vectors = select(self, *args, **kwargs)
        chosen.update(gates.argmax(dim=-1).flatten().tolist())
        return gates, vectors

    monkeypatch.setattr(A2SI, "select", recording_select)
    model.vfn.requires_grad_(False)
    model.train()
    torch.manual_seed(0)
    ir, vis = random_inputs(4, 24, 32)
    out = model.fuse_per_sample(ir, vis, torch.randn(4, model.config.task_dim))
    (out * torch.randn_like(out)).sum().backward()
    return chosen


def test_training_step_gives_every_rsc_parameter_a_gradient(monkeypatch):
    model = make_model()
    chosen = _training_step(model, monkeypatch)
    assert chosen == set(range(len(CONFIGURATIONS)))  # precondition: all configurations used
    missing = [
        name
        for name, p in model.rsc.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert missing == []


def test_training_step_reaches_router_query_embeddings_bank_and_predictors(monkeypatch):
    model = make_model()
    _training_step(model, monkeypatch)
    for modality in ("ir", "vis"):
        block = model.rsc.block(modality, 0)
        for module in (block.router, block.query, block.image_embed, block.task_embed):
            assert all(torch.any(p.grad != 0) for p in module.parameters())
    bank_grad = model.rsc.bank.vectors.grad
    for sub_bank in range(len(CONFIGURATIONS)):
        assert torch.any(bank_grad[sub_bank] != 0), f"sub-bank {sub_bank} got no gradient"
    for size, predictor in model.rsc.kernels.by_size.items():
        assert all(torch.any(p.grad != 0) for p in predictor.parameters()), size


def test_frozen_vfn_gets_no_gradient(monkeypatch):
    model = make_model()
    _training_step(model, monkeypatch)
    assert all(p.grad is None for p in model.vfn.parameters())


def test_training_mode_selection_is_stochastic_and_eval_is_not():
    model = make_model()
    block, bank = model.rsc.block("ir", 0), model.rsc.bank()
    image_emb, task_emb = torch.randn(8, 128), torch.randn(8, 128)
    with torch.no_grad():
        block.eval()
        assert torch.equal(
            block.select(image_emb, task_emb, bank)[0], block.select(image_emb, task_emb, bank)[0]
        )
        block.train()
        torch.manual_seed(0)
        draws = [block.select(image_emb, task_emb, bank)[0] for _ in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


# ------------------------------------------------------------------ A2SI internals


def _random_selection(n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot gates covering every configuration and random basis vectors."""
    gen = torch.Generator().manual_seed(seed)
    choice = torch.arange(n * m).view(n, m) % len(CONFIGURATIONS)
    choice = choice[:, torch.randperm(m, generator=gen)]
    gates = F.one_hot(choice, len(CONFIGURATIONS)).float()
    vectors = torch.randn(n, m, len(CONFIGURATIONS), 256, generator=gen)
    return gates, vectors


def test_mixture_path_equals_selected_path():
    torch.manual_seed(0)
    kernels = KernelPredictors(256, 8)
    gates, vectors = _random_selection(3, 4)
    x = torch.randn(3, 8, 17, 23)
    with torch.no_grad():
        mixed = A2SI._mixture(x, gates, vectors, kernels)
        selected = A2SI._selected(x, gates, vectors, kernels)
    assert mixed.shape == selected.shape == (3, 4, 8, 17, 23)
    torch.testing.assert_close(mixed, selected, atol=1e-5, rtol=0)


def test_a2si_train_and_eval_forward_agree_for_fixed_gates(monkeypatch):
    """Same block, same selection: the training forward value equals the inference one
    (batch norm statistics aside, so the norm is replaced by the identity)."""
    model = make_model()
    block = model.rsc.block("vis", 0)
    block.norm = torch.nn.Identity()
    gates, vectors = _random_selection(2, 4, seed=1)
    monkeypatch.setattr(A2SI, "select", lambda self, *a: (gates, vectors))
    x = torch.randn(2, 8, 17, 23)
    bank, kernels = model.rsc.bank(), model.rsc.kernels
    args = (x, torch.randn(2, 256), torch.ones(2), bank, kernels, torch.zeros(2, 128))
    with torch.no_grad():
        inference = block.eval()(*args)
        training = block.train()(*args)
    torch.testing.assert_close(training, inference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("kernel_size", "dilation"), CONFIGURATIONS)
def test_dynamic_conv_matches_per_sample_reference(kernel_size, dilation):
    torch.manual_seed(0)
    n, m, c = 3, 4, 8
    x = torch.randn(n, c, 17, 23)
    kernels = torch.randn(n, m, c, c, kernel_size, kernel_size)
    out = dynamic_conv(x, kernels, dilation)
    pad = dilation * (kernel_size - 1) // 2
    assert out.shape == (n, m, c, 17, 23)
    for i in range(n):
        xi = F.pad(x[i : i + 1], (pad,) * 4, mode="reflect") if pad else x[i : i + 1]
        for j in range(m):
            ref = F.conv2d(xi, kernels[i, j], dilation=dilation)
            torch.testing.assert_close(out[i, j], ref[0], atol=1e-5, rtol=1e-5)


def _count_conv2d(monkeypatch) -> list[int]:
    calls: list[int] = []
    conv2d = F.conv2d

    def counting(*args, **kwargs):
        calls.append(1)
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counting)
    return calls


def test_dynamic_conv_is_one_grouped_convolution_for_all_samples(monkeypatch):
    calls = _count_conv2d(monkeypatch)
    dynamic_conv(torch.randn(6, 8, 17, 23), torch.randn(6, 4, 8, 8, 3, 3), 2)
    assert len(calls) == 1


def test_selected_path_runs_at_most_one_convolution_per_configuration(monkeypatch):
    torch.manual_seed(0)
    kernels = KernelPredictors(256, 8)
    gates, vectors = _random_selection(6, 4)
    x = torch.randn(6, 8, 17, 23)
    calls = _count_conv2d(monkeypatch)
    with torch.no_grad():
        A2SI._selected(x, gates, vectors, kernels)
    assert len(calls) <= len(CONFIGURATIONS)


def _force_configuration(block: A2SI, config: int) -> None:
    """Make the router send every branch to ``config``, whatever the input."""
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.bias.copy_(block.prototypes[config].repeat(block.branches))


@pytest.mark.parametrize("config", range(len(CONFIGURATIONS)))
def test_branches_sharing_a_configuration_get_distinct_top_ranked_vectors(config):
    model = make_model()
    block = model.rsc.block("ir", 0)
    _force_configuration(block, config)
    bank = model.rsc.bank()
    image_emb, task_emb = torch.randn(3, 128), torch.randn(3, 128)
    with torch.no_grad():
        gates, vectors = block.select(image_emb, task_emb, bank)
        query = F.normalize(block.query(torch.cat([task_emb, image_emb], dim=1)), dim=-1)
    assert torch.equal(gates.argmax(-1), torch.full((3, block.branches), config))
    sub_bank = bank[config]
    for n in range(3):
        picked = vectors[n, :, config]  # (M, dim)
        index = [int(torch.nonzero((sub_bank == v).all(dim=1))[0]) for v in picked]
        assert len(set(index)) == block.branches  # distinct vectors
        top = (F.normalize(sub_bank, dim=-1) @ query[n]).argsort(descending=True)
        assert index == top[: block.branches].tolist()  # best first, then the next best


def test_selection_is_one_hot_and_vectors_come_from_the_bank():
    model = make_model()
    block = model.rsc.block("vis", 0)
    bank = model.rsc.bank()
    with torch.no_grad():
        gates, vectors = block.select(torch.randn(5, 128), torch.randn(5, 128), bank)
    assert torch.equal(gates.sum(-1), torch.ones(5, block.branches))
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    for c in range(len(CONFIGURATIONS)):
        flat = vectors[:, :, c].reshape(-1, bank.shape[-1])
        assert all(bool((bank[c] == v).all(dim=1).any()) for v in flat)


def test_straight_through_forward_is_hard_and_gradient_is_softmax():
    logits = torch.randn(3, 4, requires_grad=True)
    hard = F.one_hot(logits.argmax(-1), 4).float()
    out = straight_through(hard, logits)
    assert torch.equal(out, hard)
    weights = torch.randn(3, 4)
    (out * weights).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    (ref_logits.softmax(-1) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_hadamard_prototypes_are_orthonormal_and_reject_bad_sizes():
    p = hadamard_prototypes(4, 16)
    torch.testing.assert_close(p @ p.t(), torch.eye(4))
    with pytest.raises(ValueError):
        hadamard_prototypes(4, 12)
    with pytest.raises(ValueError):
        hadamard_prototypes(32, 16)


def test_basis_vector_bank_starts_orthonormal_with_four_sub_banks():
    bank = RSC().bank()
    assert bank.shape == (4, 32, 256)
    flat = bank.reshape(128, 256)
    torch.testing.assert_close(flat @ flat.t(), torch.eye(128), atol=1e-5, rtol=0)


def test_kernel_predictors_share_one_3x3_predictor():
    kernels = KernelPredictors(256, 8)
    assert set(kernels.by_size) == {"1", "3"}
    v = torch.randn(2, 256)
    assert kernels.predict(0, v).shape == (2, 8, 8, 1, 1)
    assert torch.equal(kernels.predict(1, v), kernels.predict(3, v))


# ------------------------------------------------------------------ colour and loss


def test_ycbcr_round_trip_within_1e3():
    rgb = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    ycbcr = rgb_to_ycbcr(rgb)
    back = ycbcr_to_rgb(ycbcr[:, :1], ycbcr[:, 1:2], ycbcr[:, 2:3])
    assert (back - rgb).abs().max() < 1e-3


def test_ycbcr_uses_bt601_full_range_coefficients():
    primaries = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue
    ycbcr = rgb_to_ycbcr(primaries)[:, :, 0, 0]
    torch.testing.assert_close(ycbcr[:, 0], torch.tensor([0.299, 0.587, 0.114]))
    torch.testing.assert_close(ycbcr[:, 1], torch.tensor([-0.1687, -0.3313, 0.5]) + 0.5)
    torch.testing.assert_close(ycbcr[:, 2], torch.tensor([0.5, -0.4187, -0.0813]) + 0.5)


def test_grey_has_neutral_chroma():
    grey = torch.full((1, 3, 2, 2), 0.4)
    ycbcr = rgb_to_ycbcr(grey)
    torch.testing.assert_close(ycbcr[:, 0], torch.full((1, 2, 2), 0.4))
    torch.testing.assert_close(ycbcr[:, 1:], torch.full((1, 2, 2, 2), 0.5))


def test_ycbcr_to_rgb_shares_chroma_across_fused_outputs_and_clamps():
    cb, cr = torch.full((1, 1, 4, 4), 0.9), torch.full((1, 1, 4, 4), 0.1)
    y = torch.stack([torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.8)])
    rgb = ycbcr_to_rgb(y, cb, cr)
    assert rgb.shape == (2, 3, 4, 4)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert not torch.equal(rgb[0], rgb[1])


def test_fusion_loss_is_zero_for_a_perfect_fusion():
    x = torch.rand(2, 1, 24, 32, generator=torch.Generator().manual_seed(0))
    loss = FusionLoss()
    assert loss(x, x, x).item() == pytest.approx(0.0, abs=1e-7)
    dark = x * 0.5  # max(ir, vis) is ir everywhere and its gradient dominates
    assert loss(x, x, dark).item() == pytest.approx(0.0, abs=1e-7)


def test_fusion_loss_is_positive_otherwise_and_reports_components():
    ir, vis = random_inputs(2, 24, 32)
    loss_fn = FusionLoss(intensity_weight=0.2, gradient_weight=1.0)
    loss = loss_fn(torch.full_like(ir, 0.5), ir, vis)
    assert loss.item() > 0.01
    parts = loss_fn.components
    assert set(parts) == {"intensity", "gradient"}
    assert loss.item() == pytest.approx(0.2 * parts["intensity"] + parts["gradient"], rel=1e-5)


def test_fusion_loss_gradient_flows_to_fused_image():
    ir, vis = random_inputs(1, 17, 23)
    fused = torch.rand(1, 1, 17, 23, requires_grad=True)
    FusionLoss()(fused, ir, vis).backward()
    assert torch.any(fused.grad != 0)


def test_sobel_magnitude_of_constant_is_zero_and_keeps_shape():
    x = torch.full((2, 3, 17, 23), 0.3)
    g = sobel_magnitude(x)
    assert g.shape == x.shape
    assert torch.equal(g, torch.zeros_like(x))


def test_sobel_magnitude_of_horizontal_ramp():
    ramp = torch.arange(23.0).view(1, 1, 1, 23).expand(1, 1, 17, 23)
    g = sobel_magnitude(ramp)
    torch.testing.assert_close(g[..., 1:-1], torch.full((1, 1, 17, 21), 8.0))


@pytest.mark.parametrize("size", [1, 3, 5, 15])
def test_box_mean_borders_match_torch_pooling(size: int) -> None:
    """Both border rules of the one box filter against torch's pooling: replicate = the
    mean pool of the replicate-padded input; valid = the pool without the padding."""
    x = torch.rand(2, 3, 19, 26, generator=torch.Generator().manual_seed(size))
    pad = size // 2
    replicated = F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), size, stride=1)
    valid = F.avg_pool2d(x, size, stride=1, padding=pad, count_include_pad=False)
    torch.testing.assert_close(box_mean(x, size, "replicate"), replicated, atol=1e-5, rtol=0)
    torch.testing.assert_close(box_mean(x, size, "valid"), valid, atol=1e-6, rtol=0)


def test_box_mean_rejects_even_sizes_and_unknown_borders() -> None:
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="odd"):
        box_mean(x, 4)
    with pytest.raises(ValueError, match="border"):
        box_mean(x, 3, "zeros")


def test_soft_qabf_equals_the_metric_and_has_finite_gradients():
    from cldyn_ros import metrics
    from cldyn_ros.training.losses import soft_qabf

    g = torch.Generator().manual_seed(3)
    ir, vis = torch.rand(2, 2, 1, 48, 56, generator=g).unbind(0)
    fused = (0.6 * ir + 0.4 * vis).requires_grad_()
    soft = soft_qabf(fused, ir, vis, border="zeros")
    assert torch.allclose(soft, metrics.qabf(fused.detach(), ir, vis), atol=2e-3)
    soft.sum().backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    # Flat images (gx = 0 everywhere, zero strength) must not give NaN gradients either.
    flat = torch.full((1, 1, 16, 16), 0.5, requires_grad=True)
    low, high = torch.full_like(flat, 0.3), torch.full_like(flat, 0.7)
    soft_qabf(flat, low, high, "valid").sum().backward()
    assert torch.isfinite(flat.grad).all()
    # Copying a source preserves its edges best: the score ranks the fusions correctly.
    assert (soft_qabf(ir, ir, vis) > soft_qabf(torch.zeros_like(ir), ir, vis)).all()


def test_fast_ssim_of_the_loss_matches_the_metric():
    from cldyn_ros import metrics
    from cldyn_ros.training.losses import ssim_valid

    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 1, 64, 64, generator=g)
    b = (a + 0.3 * torch.rand(2, 1, 64, 64, generator=g)).clamp(0, 1)
    # The metric pads at the border, the loss uses valid positions: close, not identical.
    assert torch.allclose(ssim_valid(a, b), metrics.ssim(a, b, b), atol=5e-3)
    assert torch.allclose(ssim_valid(a, a), torch.ones(2), atol=1e-5)


def test_structure_terms_of_the_fusion_loss():
    g = torch.Generator().manual_seed(5)
    ir, vis = torch.rand(2, 2, 1, 32, 32, generator=g).unbind(0)
    loss = FusionLoss(intensity_weight=0.1, gradient_weight=0.0, qabf_weight=1.0,
                      ssim_weight=0.5)
    fused = ((ir + vis) / 2).requires_grad_()
    value = loss(fused, ir, vis)
    assert set(loss.components) == {"intensity", "qabf", "ssim"}
    expected = 0.1 * loss.components["intensity"] + loss.components["qabf"] + 0.5 * (
        loss.components["ssim"])
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert torch.isfinite(fused.grad).all()
    with pytest.raises(ValueError, match="qabf_border"):
        FusionLoss(qabf_border="mirror")


def test_max_prior_starts_at_the_maximum_and_keeps_the_cost():
    config = CLDyNConfig(prior="max", task_dim=32, embed_dim=16, bank_size=4, basis_dim=32,
                         kernel_hidden=8, branches=2)
    model = CLDyN(config).eval()
    assert count_parameters(model.vfn) == 34_761  # no parameters added
    g = torch.Generator().manual_seed(6)
    ir, vis = torch.rand(2, 2, 1, 24, 28, generator=g).unbind(0)
    with torch.no_grad():
        assert torch.equal(model(ir, vis), torch.maximum(ir, vis))
        tasks = torch.randn(2, 32, generator=g)
        assert torch.equal(model.fuse_tasks(ir, vis, tasks)[1], torch.maximum(ir, vis))
        # Trained (non-zero) output layer: a correction of the maximum, in [0, 1], and the
        # inference copy agrees.
        torch.nn.init.normal_(model.vfn.decoder.tail[-1].weight, std=0.5, generator=g)
        out = model(ir, vis)
        assert not torch.equal(out, torch.maximum(ir, vis))
        assert out.min() >= 0 and out.max() <= 1
        assert torch.allclose(inference_copy(model)(ir, vis), out, atol=1e-5)
    with pytest.raises(ValueError, match="prior"):
        CLDyN(CLDyNConfig(prior="mean"))


def test_max_prior_survives_a_checkpoint_round_trip(tmp_path):
    from cldyn_ros.inference.checkpoint import load_checkpoint, save_checkpoint

    model = CLDyN(CLDyNConfig(prior="max", with_rsc=False)).eval()
    torch.nn.init.normal_(model.vfn.decoder.tail[-1].weight, std=0.1)
    save_checkpoint(tmp_path / "m.pt", model, {}, {})
    loaded = load_checkpoint(tmp_path / "m.pt").model.eval()
    assert loaded.config.prior == "max"
    ir, vis = torch.rand(2, 1, 1, 16, 16).unbind(0)
    with torch.no_grad():
        assert torch.equal(loaded(ir, vis), model(ir, vis))


def test_detail_prior_keeps_the_textured_source_where_the_other_is_flat():
    from cldyn_ros.model.vfn import detail_selection

    g = torch.Generator().manual_seed(7)
    vis = (0.3 + 0.2 * torch.rand(1, 1, 48, 64, generator=g)).clamp(0, 1)
    haze = torch.full_like(vis, 0.6)  # a flat thermal image brighter than the texture
    fused = detail_selection(haze, vis)
    assert torch.allclose(detail_selection(vis, vis), vis, atol=1e-6)

    def high_pass(x):
        return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)

    # The texture survives: what differs from the visible image is smooth (its base mixes
    # with the haze's), while the per-pixel maximum would return the flat haze.
    residual = high_pass(fused - vis)[..., 8:-8, 8:-8].abs().mean()
    texture = high_pass(vis)[..., 8:-8, 8:-8].abs().mean()
    assert residual < 0.1 * texture
    assert torch.equal(torch.maximum(haze, vis), haze)

    model = CLDyN(CLDyNConfig(prior="detail", with_rsc=False)).eval()
    with torch.no_grad():
        assert torch.equal(model(haze, vis), fused)  # untrained: the prior itself


def test_anchor_term_penalises_brightness_shifts_not_texture():
    g = torch.Generator().manual_seed(8)
    ir, vis = torch.rand(2, 2, 1, 64, 64, generator=g).unbind(0)
    prior = (ir + vis) / 2
    loss = FusionLoss(intensity_weight=0.0, gradient_weight=0.0, anchor_weight=1.0)
    texture = 0.05 * torch.sign(torch.randn(2, 1, 64, 64, generator=g))  # zero-mean detail
    assert loss(prior + texture, ir, vis, prior) < 0.01
    assert loss(prior - 0.05, ir, vis, prior) == pytest.approx(0.05, abs=1e-4)
    assert loss(prior - 0.05, ir, vis) == 0  # no prior, no anchor term
