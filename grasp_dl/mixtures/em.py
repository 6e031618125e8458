"""The contract every mixture of :mod:`grasp_dl.mixtures` is fitted through, and its plain driver.

One EM iteration is split as scikit-learn's ``mixture/_base.py`` splits it, so any loop can drive
it: :meth:`EMMixture.start_iteration`; :meth:`EMMixture.e_step`, a batch's *sufficient
statistics* (float64 sums that add over batches and processes); :meth:`EMMixture.end_iteration`,
the M-step and the convergence test; :meth:`EMMixture.get_state` / :meth:`EMMixture.set_state` to
resume. :func:`run_em` is the plain driver; ``model=xd`` drives the same methods one Lightning
epoch per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

#: Sufficient statistics: named float64 tensors, each a sum over stars.
Stats = dict[str, Tensor]


class EMMixture(Protocol):
    """What a mixture fitted by sufficient statistics provides (see the module docstring)."""

    tol: float
    n_iter_: int
    converged_: bool

    def start_iteration(self) -> None:
        """Begin the next iteration (its number is ``n_iter_`` afterwards)."""
        ...

    def e_step(self, batch: Any) -> Stats:
        """Sufficient statistics of one batch under the current parameters."""
        ...

    def end_iteration(self, stats: Stats, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """M-step from the summed statistics; True once converged."""
        ...

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume the fit."""
        ...

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`get_state`."""
        ...


def add_stats(total: Stats | None, stats: Stats) -> Stats:
    """``total + stats`` key by key (``total`` None: a copy of ``stats``).

    Parameters
    ----------
    total : dict or None
        Statistics summed so far.
    stats : dict
        One batch's statistics (the same shapes; a key ``total`` lacks is added).

    Returns
    -------
    dict
    """
    if total is None:
        return {key: value.clone() for key, value in stats.items()}
    for key, value in stats.items():
        total[key] = total[key] + value if key in total else value.clone()
    return total


def flatten_stats(stats: Stats) -> tuple[Tensor, list[tuple[str, torch.Size]]]:
    """All statistics in one flat float64 tensor (one all-reduce), and how to split it again.

    Parameters
    ----------
    stats : dict
        Statistics.

    Returns
    -------
    flat : Tensor
        Concatenated values, sorted by key.
    layout : list
        (key, shape) pairs for :func:`unflatten_stats`.
    """
    keys = sorted(stats)
    layout = [(key, stats[key].shape) for key in keys]
    return torch.cat([stats[key].reshape(-1).to(torch.float64) for key in keys]), layout


def unflatten_stats(flat: Tensor, layout: list[tuple[str, torch.Size]]) -> Stats:
    """Inverse of :func:`flatten_stats`.

    Parameters
    ----------
    flat : Tensor
        Concatenated values.
    layout : list
        (key, shape) pairs.

    Returns
    -------
    dict
    """
    out, start = {}, 0
    for key, shape in layout:
        size = math.prod(shape)
        out[key] = flat[start : start + size].reshape(shape)
        start += size
    return out


def run_em(
    mixture: EMMixture,
    batches: Callable[[], Iterable[Any]],
    max_iter: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> EMMixture:
    """The plain driver: iterate E-step over every batch, sum, M-step, until converged or ``max_iter``.

    Parameters
    ----------
    mixture : EMMixture
        A mixture with starting parameters.
    batches : callable
        Returns an iterable of batches (one pass over the stars) each time it is called.
    max_iter : int
        Iterations at most (counted from the mixture's ``n_iter_``, so a restored fit continues).
    optimizer : torch.optim.Optimizer, optional
        Passed to :meth:`EMMixture.end_iteration` (the gradient steps of the parameters without a
        closed-form update).

    Returns
    -------
    EMMixture
        ``mixture``, fitted.
    """
    while mixture.n_iter_ < max_iter and not mixture.converged_:
        mixture.start_iteration()
        total = None
        for batch in batches():
            total = add_stats(total, mixture.e_step(batch))
        mixture.end_iteration(total, optimizer)
    return mixture


def minimise_bounded(
    objective: Callable[[Tensor], Tensor],
    start: Tensor,
    lower: Tensor,
    upper: Tensor,
    parameter: Tensor,
    optimizer: torch.optim.Optimizer,
) -> Tensor:
    """Minimise a smooth objective of a few values inside a box, by gradient steps of ``optimizer``.

    The values are ``lower + (upper - lower) * sigmoid(parameter)``; ``parameter`` (a leaf
    tensor that ``optimizer`` updates, e.g. :class:`torch.optim.LBFGS`) is set from ``start``
    first and the optimizer's history is cleared, so every call is a fresh minimisation.

    Parameters
    ----------
    objective : callable
        Values (same shape as ``start``) -> scalar tensor.
    start, lower, upper : Tensor
        Starting values and the box (float64).
    parameter : Tensor
        The optimised leaf tensor (same shape as ``start``).
    optimizer : torch.optim.Optimizer
        Optimizer over ``parameter`` (or a wrapper with its ``step``, ``zero_grad`` and ``optimizer``,
        such as Lightning's, which then counts the step).

    Returns
    -------
    Tensor
        The minimising values (detached).
    """
    width = (upper - lower).clamp_min(1e-300)
    frac = ((start - lower) / width).clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        parameter.copy_(torch.log(frac) - torch.log1p(-frac))
    getattr(optimizer, "optimizer", optimizer).state.clear()  # a wrapper's (Lightning's) optimizer too

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective(lower + width * torch.sigmoid(parameter))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    optimizer.zero_grad()
    return (lower + width * torch.sigmoid(parameter)).detach()


#: Constants of scipy's bounded Brent search (``scipy.optimize._optimize._minimize_scalar_bounded``).
_SQRT_EPS = math.sqrt(2.2e-16)
_GOLDEN_MEAN = 0.5 * (3.0 - math.sqrt(5.0))


def bounded_minimum(
    func: Callable[[float], float], lower: float, upper: float, xatol: float = 1e-5, maxiter: int = 500
) -> float:
    """``scipy.optimize.minimize_scalar(func, bounds=(lower, upper), method="bounded", options={"xatol": xatol}).x``.

    The same bounded Brent search, step for step (scipy 1.17's ``_minimize_scalar_bounded``), in
    Python floats: every value is the same IEEE double operation, so the minimum is bit for bit
    scipy's, without the cost of its option checks and of numpy scalars (the M-step runs a few
    searches per EM iteration, thousands per cluster). Bounds that are not finite or not ordered
    go to scipy, which raises.

    Parameters
    ----------
    func : callable
        The objective, float -> float.
    lower, upper : float
        The bounds.
    xatol : float
        Absolute tolerance on the minimum's position.
    maxiter : int
        Function evaluations at most.

    Returns
    -------
    float
        The minimum's position.
    """
    a, b = float(lower), float(upper)
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        from scipy.optimize import minimize_scalar

        return float(minimize_scalar(func, bounds=(lower, upper), method="bounded", options={"xatol": xatol}).x)
    fulc = a + _GOLDEN_MEAN * (b - a)
    nfc = xf = fulc
    rat = e = 0.0
    fx = float(func(xf))
    num = 1
    ffulc = fnfc = fx
    xm = 0.5 * (a + b)
    tol1 = _SQRT_EPS * abs(xf) + xatol / 3.0
    tol2 = 2.0 * tol1
    while abs(xf - xm) > (tol2 - 0.5 * (b - a)):
        golden = True
        if abs(e) > tol1:  # a parabolic step?
            golden = False
            r = (xf - nfc) * (fx - ffulc)
            q = (xf - fulc) * (fx - fnfc)
            p = (xf - fulc) * q - (xf - nfc) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            r = e
            e = rat
            if abs(p) < abs(0.5 * q * r) and p > q * (a - xf) and p < q * (b - xf):
                rat = (p + 0.0) / q
                x = xf + rat
                if (x - a) < tol2 or (b - x) < tol2:
                    rat = tol1 * (-1.0 if xm - xf < 0.0 else 1.0)  # np.sign(v) + (v == 0)
            else:
                golden = True
        if golden:
            e = (a - xf) if xf >= xm else (b - xf)
            rat = _GOLDEN_MEAN * e
        x = xf + (-1.0 if rat < 0.0 else 1.0) * max(abs(rat), tol1)
        fu = float(func(x))
        num += 1
        if fu <= fx:
            if x >= xf:
                a = xf
            else:
                b = xf
            fulc, ffulc = nfc, fnfc
            nfc, fnfc = xf, fx
            xf, fx = x, fu
        else:
            if x < xf:
                a = x
            else:
                b = x
            if (fu <= fnfc) or (nfc == xf):
                fulc, ffulc = nfc, fnfc
                nfc, fnfc = x, fu
            elif (fu <= ffulc) or (fulc == xf) or (fulc == nfc):
                fulc, ffulc = x, fu
        xm = 0.5 * (a + b)
        tol1 = _SQRT_EPS * abs(xf) + xatol / 3.0
        tol2 = 2.0 * tol1
        if num >= maxiter:
            break
    return xf


def new_optimizer(parameter: Tensor) -> torch.optim.Optimizer:
    """The optimizer of :func:`minimise_bounded` (L-BFGS with a strong-Wolfe line search).

    Parameters
    ----------
    parameter : Tensor
        The leaf tensor it updates.

    Returns
    -------
    torch.optim.LBFGS
    """
    return torch.optim.LBFGS(
        [parameter], lr=1.0, max_iter=20, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )


__all__ = [
    "EMMixture",
    "Stats",
    "add_stats",
    "bounded_minimum",
    "flatten_stats",
    "minimise_bounded",
    "new_optimizer",
    "run_em",
    "unflatten_stats",
]
