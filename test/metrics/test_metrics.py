"""Tests of cldyn_ros.metrics: hand-computed values, invariants, shapes, real VIFB data."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from cldyn_ros import metrics

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VIFB = DATA_ROOT / "vifb"

TRIPLE_METRICS = [m for m in metrics.METRIC_NAMES if m not in ("EN", "SD", "SF", "AG")]


def grey(levels) -> torch.Tensor:
    """Return an (H, W) float image in [0, 1] from 8-bit grey levels."""
    return torch.tensor(levels, dtype=torch.float32) / 255


def random_triple(batch: int = 2, size: int = 48, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ir, vis = torch.rand(2, batch, 1, size, size, generator=gen)
    return (ir + vis) / 2, ir, vis


def edge_image(size: int = 48) -> torch.Tensor:
    """Return a (1, 1, size, size) image with a bright square on a diagonal ramp."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = 0.2 + 0.3 * (xx + yy) / (2 * size)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0.9
    return img[None, None].float()


# ------------------------------------------------------------------ single-image metrics


def test_entropy_hand_values():
    half = grey([[0, 0, 255, 255]] * 2)
    assert metrics.entropy(half).item() == pytest.approx(1.0, abs=1e-6)
    four = grey([[0, 64, 128, 255]] * 3)
    assert metrics.entropy(four).item() == pytest.approx(2.0, abs=1e-6)
    # 1/2, 1/4, 1/4 -> 1.5 bits
    assert metrics.entropy(grey([[10, 10], [20, 30]])).item() == pytest.approx(1.5, abs=1e-6)


def test_entropy_quantises_to_nearest_grey_level():
    # 100.4/255 and 99.6/255 both round to level 100: one level, 0 bits.
    img = torch.tensor([[100.4, 99.6], [100.0, 100.2]]) / 255
    assert metrics.entropy(img).item() == 0.0


def test_std_dev_is_population_std_in_grey_levels():
    assert metrics.std_dev(grey([[0, 255], [0, 255]])).item() == pytest.approx(127.5)
    levels = np.array([[3.0, 7.0, 1.0], [9.0, 4.0, 6.0]])
    expected = float(np.std(levels))  # ddof = 0
    assert metrics.std_dev(grey(levels.tolist())).item() == pytest.approx(expected, rel=1e-5)


def test_spatial_frequency_and_average_gradient_on_ramp():
    # 3x3 ramp with horizontal steps of 10 and vertical steps of 20 grey levels.
    ramp = grey([[0, 10, 20], [20, 30, 40], [40, 50, 60]])
    # RF^2 = mean of six (10)^2, CF^2 = mean of six (20)^2 -> sqrt(100 + 400)
    assert metrics.spatial_frequency(ramp).item() == pytest.approx(math.sqrt(500), rel=1e-5)
    # each of the 2x2 forward-difference pixels: sqrt((10^2 + 20^2) / 2)
    assert metrics.average_gradient(ramp).item() == pytest.approx(math.sqrt(250), rel=1e-5)


def test_spatial_frequency_uneven_rows():
    # Rows differ: horizontal diffs (5, 5) in row 0 and (0, 0) in row 1 -> RF^2 = 50 / 4;
    # vertical diffs (0, 5, 10) -> CF^2 = 125 / 3.
    img = grey([[0, 5, 10], [0, 0, 0]])
    expected = math.sqrt(50 / 4 + 125 / 3)
    assert metrics.spatial_frequency(img).item() == pytest.approx(expected, rel=1e-5)
    # AG over the 1x2 corner pixels: (dx, dy) = (5, 0) and (5, -5)
    expected_ag = (math.sqrt(25 / 2) + math.sqrt(50 / 2)) / 2
    assert metrics.average_gradient(img).item() == pytest.approx(expected_ag, rel=1e-5)


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_constant_image_has_zero_single_metrics(value):
    img = torch.full((2, 1, 16, 16), value)
    for fn in (metrics.entropy, metrics.std_dev, metrics.spatial_frequency,
               metrics.average_gradient):
        out = fn(img)
        assert torch.equal(out, torch.zeros(2)), fn.__name__


# ------------------------------------------------------------------ mutual information


def test_mutual_information_pair_of_image_with_itself_is_its_entropy():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 32, 32, generator=gen)
    torch.testing.assert_close(metrics.mutual_information_pair(x, x), metrics.entropy(x))


def test_mutual_information_sums_both_sources():
    fused, _, vis = random_triple(batch=2, size=32, seed=2)
    mi = metrics.mutual_information(fused, fused, vis)  # F == A: MI(F, A) = EN(F)
    expected = metrics.entropy(fused) + metrics.mutual_information_pair(fused, vis)
    torch.testing.assert_close(mi, expected)


def test_mutual_information_hand_values():
    a = grey([[0, 0], [255, 255]])
    independent = grey([[0, 255], [0, 255]])
    assert metrics.mutual_information_pair(a, independent).item() == pytest.approx(0, abs=1e-6)
    assert metrics.mutual_information_pair(a, 1 - a).item() == pytest.approx(1.0, abs=1e-6)
    constant = torch.full((2, 2), 0.5)
    assert metrics.mutual_information_pair(a, constant).item() == pytest.approx(0, abs=1e-6)


# ------------------------------------------------------------------ Q^AB/F


def test_qabf_in_unit_interval_on_random_images():
    gen = torch.Generator().manual_seed(3)
    fused, ir, vis = torch.rand(3, 4, 1, 32, 32, generator=gen)
    for border in ("zeros", "reflect", "replicate"):
        q = metrics.qabf(fused, ir, vis, border=border)
        assert q.shape == (4,)
        assert bool(((q >= 0) & (q <= 1)).all()), (border, q)


def test_qabf_near_one_when_fused_is_the_only_edged_source():
    ir = edge_image()
    # With zero padding only an all-zero image has no edges (the frame is an edge otherwise).
    q = metrics.qabf(ir, ir, torch.zeros_like(ir))
    # Perfect preservation: Gamma_g / (1 + e^-7.5) * Gamma_a / (1 + e^-4.4) = 0.9748
    perfect = 0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4))
    assert q.item() == pytest.approx(perfect, abs=1e-4)
    assert q.item() > 0.95
    q_reflect = metrics.qabf(ir, ir, torch.full_like(ir, 0.5), border="reflect")
    assert q_reflect.item() == pytest.approx(perfect, abs=1e-4)


def test_qabf_symmetric_in_sources_and_penalises_lost_edges():
    ir = edge_image()
    vis = ir.flip(-1).transpose(-1, -2)
    fused = torch.maximum(ir, vis)
    torch.testing.assert_close(metrics.qabf(fused, ir, vis), metrics.qabf(fused, vis, ir))
    # A flat fused image keeps no edge (with a reflecting border even its frame is flat).
    flat = torch.full_like(ir, 0.5)
    lost = metrics.qabf(flat, ir, vis, border="reflect").item()
    assert lost < 0.01 < 0.5 < metrics.qabf(fused, ir, vis, border="reflect").item()


def test_qabf_rejects_unknown_border():
    with pytest.raises(ValueError, match="border"):
        metrics.qabf(*random_triple(batch=1, size=8), border="circular")


# ------------------------------------------------------------------ SCD, SSIM, VIF, PSNR


def test_scd_matches_numpy_correlations():
    fused, ir, vis = random_triple(batch=1, size=24, seed=4)
    fused = fused + 0.1 * torch.rand(fused.shape, generator=torch.Generator().manual_seed(5))
    f, a, b = (t.flatten().double().numpy() for t in (fused, ir, vis))
    expected = np.corrcoef(f - b, a)[0, 1] + np.corrcoef(f - a, b)[0, 1]
    assert metrics.scd(fused, ir, vis).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_is_mean_of_both_pairs():
    fused, ir, vis = random_triple(batch=2, size=32, seed=6)
    both = metrics.ssim(fused, ir, vis)
    only_a, only_b = metrics.ssim(fused, ir, ir), metrics.ssim(fused, vis, vis)
    torch.testing.assert_close(both, (only_a + only_b) / 2)
    torch.testing.assert_close(metrics.ssim(ir, ir, ir), torch.ones(2))


def test_vif_is_sum_of_both_pairs_and_needs_41_pixels():
    img = edge_image(48) + 0.05 * torch.rand(1, 1, 48, 48, generator=torch.Generator())
    torch.testing.assert_close(metrics.vif(img, img, img), torch.full((1,), 2.0))
    # a flat source contributes 0
    torch.testing.assert_close(metrics.vif(img, img, torch.zeros_like(img)), torch.ones(1))
    with pytest.raises(ValueError, match="41"):
        metrics.vif(*random_triple(batch=1, size=40))


def test_psnr_from_mean_mse():
    fused = torch.zeros(8, 8)
    ir = torch.full((8, 8), 10 / 255)
    vis = torch.full((8, 8), 20 / 255)
    expected = 10 * math.log10(255**2 / ((100 + 400) / 2))
    assert metrics.psnr(fused, ir, vis).item() == pytest.approx(expected, rel=1e-5)
    # With ir == vis it is the ordinary PSNR of one pair.
    f, a, _ = random_triple(batch=1, size=16, seed=7)
    reference = peak_signal_noise_ratio(f, a, data_range=1.0)
    assert metrics.psnr(f, a, a).item() == pytest.approx(reference.item(), rel=1e-5)
    assert metrics.psnr(a, a, a).item() == pytest.approx(metrics.PSNR_MAX_DB)


# ------------------------------------------------------------------ batching, shapes, guards


def test_batched_equals_per_image():
    fused, ir, vis = random_triple(batch=3, size=48, seed=8)
    batched = metrics.fusion_metrics(fused, ir, vis)
    for i in range(3):
        single = metrics.fusion_metrics(fused[i], ir[i], vis[i])  # (1, H, W) each
        for name in metrics.METRIC_NAMES:
            torch.testing.assert_close(batched[name][i : i + 1], single[name], msg=name)


def test_shape_promotion():
    fused, ir, vis = random_triple(batch=1, size=12, seed=9)
    names = [n for n in metrics.METRIC_NAMES if n != "VIF"]
    for view in (lambda t: t[0, 0], lambda t: t[0], lambda t: t):
        out = metrics.fusion_metrics(view(fused), view(ir), view(vis), names)
        assert all(v.shape == (1,) for v in out.values())


def test_bad_inputs_raise():
    fused, ir, vis = random_triple(batch=2, size=12)
    with pytest.raises(ValueError, match="shape"):
        metrics.entropy(torch.rand(3, 12, 12))  # three channels, not a batch
    with pytest.raises(ValueError, match="shape"):
        metrics.entropy(torch.rand(1, 3, 12, 12))
    with pytest.raises(ValueError, match="same shape"):
        metrics.qabf(fused, ir, vis[:1])
    with pytest.raises(TypeError, match="float"):
        metrics.entropy(torch.zeros(12, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown"):
        metrics.fusion_metrics(fused, ir, vis, ["EN", "Nabf"])


def test_fusion_metrics_order_fast_subset_and_half_precision():
    fused, ir, vis = random_triple(batch=2, size=48, seed=10)
    out = metrics.fusion_metrics(fused, ir, vis, metrics.FAST_METRICS)
    assert tuple(out) == metrics.FAST_METRICS
    assert set(metrics.FAST_METRICS) <= set(metrics.METRIC_NAMES)
    half = metrics.fusion_metrics(fused.half(), ir.half(), vis.half(), metrics.FAST_METRICS)
    for name in metrics.FAST_METRICS:
        torch.testing.assert_close(half[name], out[name], rtol=2e-2, atol=2e-2, msg=name)
    assert tuple(metrics.fusion_metrics(fused, ir, vis, "SSIM")) == ("SSIM",)


@pytest.mark.parametrize("values", [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (1.0, 0.0, 0.3)])
def test_constant_images_give_finite_values(values):
    fused, ir, vis = (torch.full((2, 1, 48, 48), v) for v in values)
    out = metrics.fusion_metrics(fused, ir, vis)
    for name, value in out.items():
        assert value.shape == (2,), name
        assert bool(torch.isfinite(value).all()), (name, value)
    for name in ("EN", "SD", "SF", "AG", "MI", "SCD"):
        assert torch.equal(out[name], torch.zeros(2)), name
    # constant sources next to a textured fused image
    textured = random_triple(batch=2, size=48)[0]
    for name, value in metrics.fusion_metrics(textured, ir, vis).items():
        assert bool(torch.isfinite(value).all()), (name, value)


# ------------------------------------------------------------------ real data


def _vifb_pairs():
    cv2 = pytest.importorskip("cv2")
    if not (VIFB / "ir").is_dir() or not (VIFB / "vi").is_dir():
        pytest.skip(f"VIFB images not found at {VIFB} (shared data set absent)")
    pairs = []
    for ir_path in sorted((VIFB / "ir").glob("*.jpg")):
        ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
        bgr = cv2.imread(str(VIFB / "vi" / ir_path.name), cv2.IMREAD_COLOR)
        assert ir is not None and bgr is not None, ir_path.name
        bgr = bgr.astype(np.float32)
        y = 0.299 * bgr[..., 2] + 0.587 * bgr[..., 1] + 0.114 * bgr[..., 0]  # BT.601
        pairs.append((torch.from_numpy(ir.astype(np.float32) / 255),
                      torch.from_numpy(y / 255)))
    return pairs


@pytest.mark.data
@pytest.mark.slow
def test_vifb_baselines_match_earlier_measurements():
    pairs = _vifb_pairs()
    assert len(pairs) == 21
    scores = {key: [] for key in ("qabf", "qabf_reflect", "ssim")}
    for ir, vis in pairs:
        # Both baselines as a batch of 2: [max(IR, Y), (IR + Y) / 2].
        fused = torch.stack([torch.maximum(ir, vis), (ir + vis) / 2])[:, None]
        ir_b, vis_b = ir.expand_as(fused), vis.expand_as(fused)
        scores["qabf"].append(metrics.qabf(fused, ir_b, vis_b))
        scores["qabf_reflect"].append(metrics.qabf(fused, ir_b, vis_b, border="reflect"))
        scores["ssim"].append(metrics.ssim(fused, ir_b, vis_b))
    (q_max, q_avg), (qr_max, qr_avg), (s_max, s_avg) = (
        torch.stack(v).mean(dim=0).tolist() for v in scores.values()
    )
    print(f"VIFB max(IR,Y): Qabf {q_max:.4f} (reflect {qr_max:.4f}) SSIM {s_max:.4f}")
    print(f"VIFB mean     : Qabf {q_avg:.4f} (reflect {qr_avg:.4f}) SSIM {s_avg:.4f}")
    # Earlier measurement with another implementation: max 0.53 / 0.71, mean 0.38 / 0.75.
    assert 0.45 < q_max < 0.60 and 0.6 < s_max < 0.8
    assert 0.30 < q_avg < 0.45 and 0.65 < s_avg < 0.85
    assert q_avg < q_max and s_max < s_avg
    # The earlier numbers came from a reflecting border (cv2.Sobel's default).
    assert qr_max == pytest.approx(0.53, abs=0.01) and qr_avg == pytest.approx(0.38, abs=0.01)
