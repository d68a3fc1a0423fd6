"""Few-shot heads: a condition's "condition vs normal" scorer refitted on a site's labelled photos.

A bundle scores condition c against the normal class n with the logit difference
``s(x) = logit_scale * x . (t_c - t_n)`` of the normalised image embedding x and the class
embeddings t (edge_retina.prompt_table). A head replaces the direction ``u0 = logit_scale * (t_c - t_n)``
by ``u`` and adds a bias ``b``: ``s(x) = x . u + b``. Every head starts from the text direction, so
with no evidence it is the zero-shot scorer:

- ``linear-probe``: logistic regression on the shots, its weights pulled toward ``u0`` by an L2
  penalty ``rho / 2 * ||u - u0||^2`` (the zero-shot-initialised, constrained linear probe of
  ZS-LP / CLAP, Silva-Rodriguez et al., CVPR 2024). Classes are weighted equally, shots are few and
  often imbalanced.
- ``prototype-blend``: the text direction blended with the difference of the class prototypes (the
  mean embeddings of the positive and negative shots), at the text direction's length.

Why hand-written rather than scikit-learn: the runtime (numpy, no scipy or scikit-learn, see
pyproject) fits these on the device. The probe is a penalised logistic regression on at most a few
hundred rows, which Newton's method solves exactly in a few iterations; tests/test_adapt.py checks
it against scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

#: (embeddings (N, D) normalised, labels (N,) 0/1, text direction u0 (D,)) -> (u (D,), bias b)
FitFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, float]]

ZERO_SHOT = "zero-shot"
_NEWTON_ITERATIONS = 50
_NEWTON_TOLERANCE = 1e-8


@dataclass(frozen=True)
class Head:
    name: str  # as recorded in the manifest, e.g. "linear-probe(rho=0.1)"
    fit: FitFunction


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    return np.where(y == 1, len(y) / (2.0 * n_pos), len(y) / (2.0 * n_neg))


def fit_linear_probe(x: np.ndarray, y: np.ndarray, u0: np.ndarray, rho: float) -> tuple[np.ndarray, float]:
    """Minimise mean_w[log(1 + e^z) - y z] + rho/2 ||u - u0||^2 over (u, b), z = x u + b, by damped Newton.

    The optimum moves u away from u0 only within the span of the shots (the loss gradient is a
    combination of them), so the problem is solved in an orthonormal basis Q of that span,
    u = u0 + Q beta: a Newton system of (shots + 1) unknowns instead of (embedding dim + 1).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    u0 = np.asarray(u0, dtype=np.float64)
    basis, _ = np.linalg.qr(x.T)  # (D, r), r = min(N, D)
    w = _balanced_weights(y) / len(y)
    design = np.hstack([x @ basis, np.ones((len(x), 1))])
    offset = x @ u0
    theta = np.zeros(design.shape[1])
    penalty = np.r_[np.full(basis.shape[1], rho), 0.0]

    def loss(t: np.ndarray) -> float:
        z = offset + design @ t
        return float(w @ (np.logaddexp(0.0, z) - y * z) + 0.5 * penalty @ t ** 2)

    current = loss(theta)
    for _ in range(_NEWTON_ITERATIONS):
        p = 1.0 / (1.0 + np.exp(-(offset + design @ theta)))
        gradient = design.T @ (w * (p - y)) + penalty * theta
        hessian = (design.T * (w * p * (1.0 - p))) @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-4:  # halve the step until the loss decreases (Newton can overshoot far from the optimum)
            candidate = theta - scale * step
            value = loss(candidate)
            if value <= current:
                break
            scale /= 2.0
        else:
            break
        theta, previous, current = candidate, current, value
        if previous - current < _NEWTON_TOLERANCE:
            break
    return u0 + basis @ theta[:-1], float(theta[-1])


def fit_prototype_blend(x: np.ndarray, y: np.ndarray, u0: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    x = np.asarray(x, dtype=np.float64)
    u0 = np.asarray(u0, dtype=np.float64)
    length = np.linalg.norm(u0)
    prototypes = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
    blended = (1.0 - alpha) * u0 / length + alpha * prototypes / max(np.linalg.norm(prototypes), 1e-12)
    return length * blended / max(np.linalg.norm(blended), 1e-12), 0.0


# The candidates cross-validation chooses among. Chosen on the shared datasets' train splits (shots
# drawn from them, scored on the rest of them; never on a test split) with the v2 reference bundle:
# a looser pull (rho = 1e-4) or a blend leaning further to the prototypes (0.8) lost AUROC on as many
# tasks as they helped, and every extra candidate makes the cross-validated choice more optimistic.
LINEAR_PROBE_PENALTIES = (0.001, 0.01)
PROTOTYPE_BLENDS = (0.5,)

HEADS: dict[str, Head] = {}
for _rho in LINEAR_PROBE_PENALTIES:
    HEADS[f"linear-probe(rho={_rho:g})"] = Head(
        f"linear-probe(rho={_rho:g})", lambda x, y, u0, rho=_rho: fit_linear_probe(x, y, u0, rho))
for _alpha in PROTOTYPE_BLENDS:
    HEADS[f"prototype-blend(alpha={_alpha:g})"] = Head(
        f"prototype-blend(alpha={_alpha:g})", lambda x, y, u0, alpha=_alpha: fit_prototype_blend(x, y, u0, alpha))
