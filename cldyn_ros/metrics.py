"""No-reference metrics for infrared-visible image fusion, vectorised in torch.

Every function works on whole batches at once (no loops over pixels), on any device, so a ROS
node can evaluate its own output every n-th frame on the GPU. Nothing here imports ROS.

Conventions shared by all functions (published tables differ by exactly these, so they are
fixed and stated here):

* Inputs are float tensors of shape ``(B, 1, H, W)`` with values in ``[0, 1]``: the fused
  grey/luminance image ``fused`` (F), the infrared image ``ir`` (A) and the visible luminance
  ``vis`` (B, e.g. BT.601 Y). ``(H, W)`` and ``(1, H, W)`` are promoted to ``(1, 1, H, W)``.
  Half precision inputs are computed in float32. Integer tensors are rejected, because a
  ``uint8`` image in ``[0, 255]`` would otherwise be silently misread.
* Metrics whose published definition is on 8-bit grey levels work on ``255 * x``:
  EN and MI quantise ``round(255 * x)`` (clamped to ``[0, 255]``) into 256 bins; SD, SF, AG,
  Q^AB/F (Sobel magnitudes), VIF and PSNR use the continuous value ``255 * x`` (as in the
  VIFB benchmark). SSIM and SCD are scale invariant.
* Logarithms of information measures (EN, MI) are base 2 (bits).
* Every function returns a tensor of shape ``(B,)``, one value per image of the batch.
* Degenerate inputs give finite values: a constant image has EN = SD = SF = AG = 0, and
  ratios with a zero denominator (correlation of a constant image, Q^AB/F with no source
  edges, VIF of a flat reference) are defined as 0, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .model.layers import sobel_xy
from .tv_compat import ensure_torchvision_ops

ensure_torchvision_ops()  # torchmetrics imports torchvision where it is installed

from torchmetrics.functional.image import (  # noqa: E402
    structural_similarity_index_measure,
    visual_information_fidelity,
)

__all__ = [
    "FAST_METRICS",
    "METRIC_NAMES",
    "average_gradient",
    "entropy",
    "fusion_metrics",
    "mutual_information",
    "mutual_information_pair",
    "psnr",
    "qabf",
    "scd",
    "spatial_frequency",
    "ssim",
    "std_dev",
    "vif",
]

METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "Qabf", "SCD", "SSIM", "VIF", "PSNR")
# Cheap enough (a few elementwise passes, one 3x3 convolution, histograms) to run every n-th
# frame inside a node; SCD/SSIM/VIF/PSNR are meant for offline evaluation.
FAST_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "Qabf")

GREY_MAX = 255.0
N_BINS = 256

# Xydeas & Petrovic (2000) sigmoid constants, as in the reference MATLAB code used by VIFB.
QABF_GAMMA_G = 0.9994
QABF_KAPPA_G = -15.0
QABF_SIGMA_G = 0.5
QABF_GAMMA_A = 0.9879
QABF_KAPPA_A = -22.0
QABF_SIGMA_A = 0.8
QABF_L = 1.0

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
VIF_MIN_SIZE = 41  # torchmetrics' VIF needs four 2x-downsampled scales of valid convolution
PSNR_MAX_DB = 100.0  # cap for identical images, where MSE = 0 would give +inf


# --------------------------------------------------------------------------------------------
# Input handling and small numeric helpers
# --------------------------------------------------------------------------------------------


def _as_batch(img: Tensor, name: str = "img") -> Tensor:
    """Promote ``(H, W)`` / ``(1, H, W)`` / ``(B, 1, H, W)`` to a float ``(B, 1, H, W)`` view."""
    if not isinstance(img, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
    if not img.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {img.dtype}")
    if img.dim() == 2:
        img = img[None, None]
    elif img.dim() == 3 and img.shape[0] == 1:
        img = img[None]
    if img.dim() != 4 or img.shape[1] != 1:
        raise ValueError(
            f"{name} must have shape (H, W), (1, H, W) or (B, 1, H, W), got {tuple(img.shape)}"
        )
    if img.shape[-2] < 2 or img.shape[-1] < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels, got {tuple(img.shape[-2:])}")
    if img.dtype in (torch.float16, torch.bfloat16):
        img = img.float()  # histogram and variance sums overflow or lose precision in half
    return img


def _as_batch_group(fused: Tensor, ir: Tensor, vis: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Promote the three images of a fusion triple and check that their shapes match."""
    fused, ir, vis = _as_batch(fused, "fused"), _as_batch(ir, "ir"), _as_batch(vis, "vis")
    if not fused.shape == ir.shape == vis.shape:
        raise ValueError(
            "fused, ir and vis must have the same shape, got "
            f"{tuple(fused.shape)}, {tuple(ir.shape)}, {tuple(vis.shape)}"
        )
    return fused, ir, vis


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """Return ``num / den`` where ``den > 0`` and 0 elsewhere, without producing NaN/inf."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _grey_levels(img: Tensor) -> Tensor:
    """Quantise ``(B, 1, H, W)`` in ``[0, 1]`` to integer grey levels ``(B, H*W)`` in [0, 255]."""
    return (img * GREY_MAX).round().clamp(0, N_BINS - 1).long().flatten(1)


def _entropy_bits(counts: Tensor) -> Tensor:
    """Return the Shannon entropy in bits of histograms ``(B, K)`` of counts; ``0 log 0 = 0``."""
    p = counts.double() / counts.sum(dim=1, keepdim=True).double()
    # xlogy(0, 0) is 0, so empty bins need no masking; float64 keeps MI(x, x) == EN(x) exact.
    # "0.0 - x" rather than "-x": a one-bin histogram then gives 0.0, not -0.0.
    return 0.0 - torch.xlogy(p, p).sum(dim=1) / math.log(2.0)


def _histogram(levels: Tensor, n_bins: int) -> Tensor:
    """Count integer indices ``(B, N)`` into ``(B, n_bins)`` histograms with one bincount."""
    batch = levels.shape[0]
    offsets = torch.arange(batch, device=levels.device)[:, None] * n_bins
    counts = torch.bincount((levels + offsets).flatten(), minlength=batch * n_bins)
    return counts.view(batch, n_bins)


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    """Return the Pearson correlation ``(B,)`` of ``(B, 1, H, W)`` images; 0 if one is flat."""
    xc = x.flatten(1) - x.flatten(1).mean(dim=1, keepdim=True)
    yc = y.flatten(1) - y.flatten(1).mean(dim=1, keepdim=True)
    num = (xc * yc).sum(dim=1)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    return _safe_div(num, den)


# --------------------------------------------------------------------------------------------
# Metrics of the fused image alone
# --------------------------------------------------------------------------------------------


def entropy(img: Tensor) -> Tensor:
    """Compute the Shannon entropy (EN) of the grey-level histogram.

    ``EN = -sum_l p_l log2 p_l`` over the 256 grey levels ``l = round(255 * x)``.

    Args:
        img: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` float image in ``[0, 1]``.

    Returns:
        ``(B,)`` entropy in bits, in ``[0, 8]``; 0 for a constant image.
    """
    img = _as_batch(img)
    return _entropy_bits(_histogram(_grey_levels(img), N_BINS)).to(img.dtype)


def std_dev(img: Tensor) -> Tensor:
    """Compute the standard deviation (SD) of the image in grey levels.

    Population standard deviation (divides by ``H*W``, not ``H*W - 1``) of ``255 * x``.

    Args:
        img: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` float image in ``[0, 1]``.

    Returns:
        ``(B,)`` SD in grey levels, in ``[0, 127.5]``.
    """
    img = _as_batch(img)
    return (img * GREY_MAX).flatten(1).std(dim=1, correction=0)


def spatial_frequency(img: Tensor) -> Tensor:
    """Compute the spatial frequency (SF) in grey levels.

    ``SF = sqrt(RF^2 + CF^2)`` with the row frequency ``RF^2 = mean((F[i, j] - F[i, j-1])^2)``
    over the ``H * (W-1)`` horizontal neighbour pairs and the column frequency
    ``CF^2 = mean((F[i, j] - F[i-1, j])^2)`` over the ``(H-1) * W`` vertical pairs, on
    ``F = 255 * x``. (Some MATLAB implementations divide both sums by ``H*W`` instead, which
    lowers SF by a factor of about ``sqrt(1 - 1/W)``, under 0.2% for VGA-sized images.)

    Args:
        img: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` float image in ``[0, 1]``.

    Returns:
        ``(B,)`` SF in grey levels; 0 for a constant image.
    """
    grey = _as_batch(img) * GREY_MAX
    rf2 = (grey[..., :, 1:] - grey[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    cf2 = (grey[..., 1:, :] - grey[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    return torch.sqrt(rf2 + cf2)


def average_gradient(img: Tensor) -> Tensor:
    """Compute the average gradient (AG) in grey levels.

    ``AG = mean_{i<H-1, j<W-1} sqrt((dx^2 + dy^2) / 2)`` with forward differences
    ``dx = F[i, j+1] - F[i, j]`` and ``dy = F[i+1, j] - F[i, j]`` on ``F = 255 * x``, averaged
    over the ``(H-1) * (W-1)`` pixels where both exist (the VIFB definition).

    Args:
        img: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` float image in ``[0, 1]``.

    Returns:
        ``(B,)`` AG in grey levels; 0 for a constant image.
    """
    grey = _as_batch(img) * GREY_MAX
    corner = grey[..., :-1, :-1]
    dx = grey[..., :-1, 1:] - corner
    dy = grey[..., 1:, :-1] - corner
    return torch.sqrt((dx * dx + dy * dy) / 2).mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------------------------
# Metrics of the fused image against both sources
# --------------------------------------------------------------------------------------------


def mutual_information_pair(a: Tensor, b: Tensor) -> Tensor:
    """Compute the mutual information MI(A, B) of two images, in bits.

    ``MI = H(A) + H(B) - H(A, B)`` from the 256 x 256 joint histogram of the grey levels
    ``round(255 * x)``; the marginals are the sums of the joint histogram. MI(x, x) = EN(x).

    Args:
        a: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` float image in ``[0, 1]``.
        b: Same shape as ``a``.

    Returns:
        ``(B,)`` mutual information in bits, in ``[0, 8]``.
    """
    a, b = _as_batch(a, "a"), _as_batch(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    joint = _histogram(_grey_levels(a) * N_BINS + _grey_levels(b), N_BINS * N_BINS)
    joint = joint.view(-1, N_BINS, N_BINS)
    h_a = _entropy_bits(joint.sum(dim=2))
    h_b = _entropy_bits(joint.sum(dim=1))
    h_ab = _entropy_bits(joint.flatten(1))
    # Rounding can leave -1e-16 for independent images; MI is non-negative by definition.
    return (h_a + h_b - h_ab).clamp_min(0).to(a.dtype)


def mutual_information(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """Compute the fusion mutual information ``MI = MI(F, A) + MI(F, B)`` in bits.

    The sum (not the mean) of the two pairwise MIs, each from a 256-bin joint histogram of
    ``round(255 * x)`` with base-2 logarithms; see :func:`mutual_information_pair`.

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image, same shape.
        vis: Visible luminance, same shape.

    Returns:
        ``(B,)`` MI in bits, in ``[0, 16]``.
    """
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    return mutual_information_pair(fused, ir) + mutual_information_pair(fused, vis)


def _sobel(grey: Tensor, border: str) -> tuple[Tensor, Tensor]:
    """Return edge strength ``g`` and orientation ``alpha`` ``(N, 1, H, W)`` from 3x3 Sobel.

    ``alpha = atan(gy / gx)`` in ``[-pi/2, pi/2]``, with ``alpha = pi/2`` where ``gx = 0``.
    The sign of ``gx`` relative to the reference code (MATLAB ``conv2`` flips the kernels) only
    matters where exactly one of two compared pixels has ``gx = 0``: a ~1e-4 effect.
    """
    gx, gy = sobel_xy(grey, border)
    strength = torch.hypot(gx, gy)
    # gy / 0 is +-inf or NaN; those entries are overwritten with pi/2 in place.
    alpha = torch.atan(gy / gx).masked_fill_(gx == 0, math.pi / 2)
    return strength, alpha


def edge_preservation(g_s: Tensor, a_s: Tensor, g_f: Tensor, a_f: Tensor) -> Tensor:
    """Return the per-pixel edge preservation ``Q^SF = Q_g * Q_alpha`` of a source S in F.

    Inputs are Sobel strengths and orientations (as from the Q^AB/F Sobel); differentiable
    almost everywhere, so the training loss in :mod:`cldyn_ros.training.losses` shares it.
    """
    # Relative strength min/max: 1 where g_S == g_F > 0. The reference MATLAB code sets
    # G = g_F on ties instead, but with grey-level Sobel magnitudes (>= 1 where non-zero for
    # 8-bit images) both saturate the sigmoid; Q_g differs by < 6e-4 on those pixels.
    # Where g_S == g_F == 0, G = 0 as in the reference code (weight g_S = 0 there anyway).
    # clamp_min: 0 / tiny = 0 where both strengths are 0.
    tiny = torch.finfo(g_s.dtype).tiny
    rel_strength = torch.minimum(g_s, g_f) / torch.maximum(g_s, g_f).clamp_min(tiny)
    rel_orient = 1 - torch.abs(a_s - a_f) / (math.pi / 2)
    q_g = QABF_GAMMA_G / (1 + torch.exp(QABF_KAPPA_G * (rel_strength - QABF_SIGMA_G)))
    q_a = QABF_GAMMA_A / (1 + torch.exp(QABF_KAPPA_A * (rel_orient - QABF_SIGMA_A)))
    return q_g * q_a


def qabf(fused: Tensor, ir: Tensor, vis: Tensor, border: str = "zeros") -> Tensor:
    """Compute the Xydeas-Petrovic gradient-based fusion quality Q^AB/F.

    Per pixel, 3x3 Sobel gradients (zero padding by default) on grey levels ``255 * x`` give
    the edge strength ``g = sqrt(gx^2 + gy^2)`` and orientation ``alpha = atan(gy / gx)``
    (``pi/2`` where ``gx = 0``). For a source S the relative strength is
    ``G = min(gS, gF) / max(gS, gF)`` and the relative orientation
    ``D = 1 - |alpha_S - alpha_F| / (pi/2)``; the preservation is ``Q^SF = Q_g * Q_a`` with
    ``Q_g = Gamma_g / (1 + exp(kappa_g (G - sigma_g)))`` and
    ``Q_a = Gamma_a / (1 + exp(kappa_a (D - sigma_a)))``, Gamma_g = 0.9994, kappa_g = -15,
    sigma_g = 0.5, Gamma_a = 0.9879, kappa_a = -22, sigma_a = 0.8. The score is the weighted mean
    ``sum(Q^AF w_A + Q^BF w_B) / sum(w_A + w_B)`` with weights ``w = g^L``, L = 1.

    The border convention changes the score noticeably, because zero padding turns the image
    frame into strong edges of every image: on the 21 VIFB pairs the max(IR, Y) baseline
    scores 0.559 with ``"zeros"`` and 0.532 with ``"reflect"`` (0.410 / 0.378 for the
    average). ``"zeros"`` is the default because the reference MATLAB code (VIFB) and the
    CDDFuse-style Python evaluators use ``conv2``/``convolve2d(..., 'same')``, i.e. zero fill;
    ``"reflect"`` equals OpenCV's default ``BORDER_REFLECT_101`` (``cv2.Sobel``).

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image, same shape.
        vis: Visible luminance, same shape.
        border: Padding of the Sobel filter: ``"zeros"`` (reference code), ``"reflect"``
            (mirror without repeating the edge pixel) or ``"replicate"``.

    Returns:
        ``(B,)`` Q^AB/F in ``[0, 1]`` (at most ``~0.975``, the product of the two sigmoids at
        perfect preservation); 0 when neither source has any edge.
    """
    if border not in ("zeros", "reflect", "replicate"):
        raise ValueError(f"border must be 'zeros', 'reflect' or 'replicate', got {border!r}")
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    batch = fused.shape[0]
    # One Sobel pass for the three images of the whole batch.
    strength, alpha = _sobel(torch.cat([fused, ir, vis]) * GREY_MAX, border)
    g_f, g_a, g_b = strength.split(batch)
    a_f, a_a, a_b = alpha.split(batch)
    w_a, w_b = g_a.pow(QABF_L), g_b.pow(QABF_L)
    q_af = edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = edge_preservation(g_b, a_b, g_f, a_f)
    num = (q_af * w_a + q_bf * w_b).sum(dim=(1, 2, 3))
    den = (w_a + w_b).sum(dim=(1, 2, 3))
    return _safe_div(num, den)


def scd(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """Compute the sum of the correlations of differences (SCD, Aslantas & Bendes 2015).

    ``SCD = r(F - B, A) + r(F - A, B)`` with ``r`` the Pearson correlation over all pixels of
    an image (scale invariant, so the ``[0, 1]`` or grey-level range does not matter). A
    correlation with a constant image is defined as 0.

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image (A), same shape.
        vis: Visible luminance (B), same shape.

    Returns:
        ``(B,)`` SCD in ``[-2, 2]``.
    """
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    return _pearson(fused - vis, ir) + _pearson(fused - ir, vis)


def ssim(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """Compute the fusion SSIM as the mean ``(SSIM(F, A) + SSIM(F, B)) / 2``.

    Each SSIM is ``torchmetrics.functional.image.structural_similarity_index_measure`` with an
    11x11 gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03 and ``data_range = 1`` (the
    ``[0, 1]`` input range, equivalent to L = 255 on 8-bit grey levels), averaged over the
    image without the 5-pixel border. Note that CDDFuse-style tables report the sum instead
    (twice this value).

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image, same shape.
        vis: Visible luminance, same shape.

    Returns:
        ``(B,)`` mean SSIM, at most 1.
    """
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    if min(fused.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"ssim needs images of at least {SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE} pixels, "
            f"got {tuple(fused.shape[-2:])}"
        )
    batch = fused.shape[0]
    # Both pairs in one call: preds (F, F) against targets (A, B).
    scores = structural_similarity_index_measure(
        torch.cat([fused, fused]),
        torch.cat([ir, vis]),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        data_range=1.0,
        k1=0.01,
        k2=0.03,
        reduction="none",
    )
    assert isinstance(scores, Tensor)  # reduction="none": one score per image
    return scores.view(2, batch).mean(dim=0)


def vif(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """Compute the fusion VIF as the sum ``VIF(A -> F) + VIF(B -> F)``.

    Each term is the pixel-domain VIF of Sheikh & Bovik (``torchmetrics`` VIF-P, four scales,
    visual noise variance ``sigma_n^2 = 2``) with the source as reference and the fused image
    as the distorted one, on grey levels ``255 * x`` (the scale ``sigma_n^2`` refers to). The
    sum follows the CDDFuse-style tables. A flat source (VIF 0 / 0) contributes 0 (the
    CDDFuse evaluator returns 1 for that NaN case).

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image, same shape.
        vis: Visible luminance, same shape.

    Returns:
        ``(B,)`` summed VIF, non-negative (each term is about 1 when F equals the source).

    Raises:
        ValueError: If the images are smaller than 41 x 41 pixels.
    """
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    if min(fused.shape[-2:]) < VIF_MIN_SIZE:
        raise ValueError(
            f"vif needs images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE} pixels "
            f"(four downsampled scales), got {tuple(fused.shape[-2:])}"
        )
    batch = fused.shape[0]
    refs = torch.cat([ir, vis])
    scores = visual_information_fidelity(
        torch.cat([fused, fused]) * GREY_MAX, refs * GREY_MAX, sigma_n_sq=2.0, reduction="none"
    )
    # A flat reference has no information to preserve: VIF is 0 / 0 there, or float noise of
    # the local variances (giving ~1 for a flat 0.5 but NaN for a flat 0), so define it as 0.
    flat = refs.amax(dim=(1, 2, 3)) == refs.amin(dim=(1, 2, 3))
    scores = torch.where(flat | ~torch.isfinite(scores), torch.zeros_like(scores), scores)
    return scores.view(2, batch).sum(dim=0)


def psnr(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """Compute the fusion PSNR from the mean of the two MSEs, in dB.

    ``PSNR = 10 log10(255^2 / ((MSE(F, A) + MSE(F, B)) / 2))`` with the MSEs on grey levels
    ``255 * x``. This is not the mean of the two pairwise PSNRs (what calling
    ``torchmetrics``' PSNR per pair would give), hence computed here directly. Capped at
    100 dB, reached only when F equals both sources.

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image, same shape.
        vis: Visible luminance, same shape.

    Returns:
        ``(B,)`` PSNR in dB, at most 100.
    """
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    mse_a = ((fused - ir) * GREY_MAX).pow(2).mean(dim=(1, 2, 3))
    mse_b = ((fused - vis) * GREY_MAX).pow(2).mean(dim=(1, 2, 3))
    mse = (mse_a + mse_b) / 2
    min_mse = GREY_MAX**2 * 10 ** (-PSNR_MAX_DB / 10)
    return 10 * torch.log10(GREY_MAX**2 / mse.clamp_min(min_mse))


# --------------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------------

_SINGLE: dict[str, Callable[[Tensor], Tensor]] = {
    "EN": entropy,
    "SD": std_dev,
    "SF": spatial_frequency,
    "AG": average_gradient,
}
_TRIPLE: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "MI": mutual_information,
    "Qabf": qabf,
    "SCD": scd,
    "SSIM": ssim,
    "VIF": vif,
    "PSNR": psnr,
}


def fusion_metrics(
    fused: Tensor, ir: Tensor, vis: Tensor, names: Sequence[str] = METRIC_NAMES
) -> dict[str, Tensor]:
    """Compute several fusion metrics of a batch, with the conventions of this module.

    EN, SD, SF and AG are computed on the fused image alone; the others compare it with both
    sources as documented on each function. Use ``names=FAST_METRICS`` inside a node.

    Args:
        fused: ``(B, 1, H, W)`` fused image in ``[0, 1]`` (or ``(H, W)``/``(1, H, W)``).
        ir: Infrared image, same shape.
        vis: Visible luminance, same shape.
        names: Metric names out of :data:`METRIC_NAMES`, in the order wanted.

    Returns:
        Dict from name to a ``(B,)`` tensor, in the order of ``names``.

    Raises:
        ValueError: On an unknown name, or (for VIF) images smaller than 41 x 41.
    """
    if isinstance(names, str):
        names = (names,)  # a bare "SSIM" would otherwise be read as four one-letter names
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric names {unknown}; choose from {METRIC_NAMES}")
    fused, ir, vis = _as_batch_group(fused, ir, vis)
    results: dict[str, Tensor] = {}
    for name in names:
        if name in _SINGLE:
            results[name] = _SINGLE[name](fused)
        else:
            results[name] = _TRIPLE[name](fused, ir, vis)
    return results
