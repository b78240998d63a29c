"""CAGrad-style combination of per-task gradients (conflict-averse min-norm solve).

Given task gradients ``g_1 .. g_n`` (rows of ``grads``), their mean ``g0`` and ``c >= 0``,
CAGrad (Liu et al., NeurIPS 2021) looks for the update ``d`` that maximises the worst
task's improvement ``min_i <g_i, d>`` inside a ball of radius ``c ||g0||`` around ``g0``.
Its dual is a small problem over the probability simplex:

    w* = argmin_{w in simplex}  <g_w, g0> + c ||g0|| ||g_w||,     g_w = sum_i w_i g_i

and the update is ``d = g0 + c ||g0|| / ||g_w*|| * g_w*``, divided by ``1 + c^2`` (the
reference implementation's default rescaling, which keeps the step size comparable to
``g0``). With ``c = 0`` this is plain averaging. Everything here depends on the gradients
only through their ``n x n`` Gram matrix, so the solve costs nothing next to a backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cagrad", "cagrad_objective", "project_simplex", "solve_cagrad_weights"]

_EPS = 1e-12


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (shape ``(n,)``) onto ``{w >= 0, sum w = 1}``."""
    n = v.numel()
    u, _ = torch.sort(v, descending=True)
    css = u.cumsum(0) - 1.0
    idx = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    cond = u - css / idx > 0
    rho = int(torch.nonzero(cond)[-1]) + 1
    theta = css[rho - 1] / rho
    return (v - theta).clamp_min(0.0)


def cagrad_objective(w: Tensor, gram: Tensor, c: float) -> Tensor:
    """The dual objective ``<g_w, g0> + c ||g0|| ||g_w||`` from the Gram matrix."""
    n = gram.shape[0]
    b = torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    g0_norm = (b @ gram @ b).clamp_min(0).sqrt()
    return w @ gram @ b + c * g0_norm * (w @ gram @ w).clamp_min(0).add(_EPS).sqrt()


def solve_cagrad_weights(gram: Tensor, c: float = 0.5, iterations: int = 300) -> Tensor:
    """Minimise :func:`cagrad_objective` over the simplex (projected gradient with
    backtracking, in float64). Returns the weights ``(n,)``.
    """
    gram = gram.detach().double()
    n = gram.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=gram.device)
    if n == 1 or c == 0:
        return w
    scale = gram.diagonal().mean()
    if scale <= 0:
        return w
    gram = gram / scale  # the minimiser does not change with a common scale
    b = w.clone()
    g0_norm = float((b @ gram @ b).clamp_min(0).sqrt())
    if g0_norm == 0.0:
        return w

    def f(x: Tensor) -> float:
        return float(cagrad_objective(x, gram, c))

    step, value = 1.0, f(w)
    for _ in range(iterations):
        norm = float((w @ gram @ w).clamp_min(0).add(_EPS).sqrt())
        grad = gram @ b + c * g0_norm * (gram @ w) / norm
        while True:
            candidate = project_simplex(w - step * grad)
            cand_value = f(candidate)
            diff = candidate - w
            # Sufficient decrease for projected gradient (quadratic upper bound test).
            if cand_value <= value + float(grad @ diff) + float(diff @ diff) / (2 * step) + 1e-15:
                break
            step *= 0.5
            if step < 1e-12:
                return w
        if float((candidate - w).abs().max()) < 1e-10:
            w, value = candidate, cand_value
            break
        w, value = candidate, cand_value
        step *= 2.0  # let the step grow again
    return w


def cagrad(grads: Tensor, c: float = 0.5, rescale: bool = True) -> tuple[Tensor, Tensor]:
    """Combine task gradients ``(n, P)`` into one update ``(P,)``.

    Returns ``(update, weights)``; ``weights`` are the simplex weights of the dual solve.
    Rows may be zero (a task that did not touch some parameters contributes zeros there).
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be (tasks, params), got shape {tuple(grads.shape)}")
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    g = grads.double()
    gram = g @ g.t()
    w = solve_cagrad_weights(gram, c)
    g0 = g.mean(dim=0)
    gw = w @ g
    gw_norm = gw.norm()
    g0_norm = g0.norm()
    update = g0 if gw_norm < 1e-20 else g0 + (c * g0_norm / gw_norm) * gw
    if rescale:
        update = update / (1.0 + c * c)
    return update.to(grads.dtype), w.to(grads.dtype)
