"""Power-law fits: L(x) = E + A·x^-α and the Chinchilla form L(N, D) = E + A/N^α + B/D^β.

Fitted the way Hoffmann et al. 2022 (arXiv:2203.15556, appendix D.2) and Epoch AI's replication (Besiroglu et
al. 2024, arXiv:2404.10102) did: Huber loss (δ = 1e-3) on the log of the loss with the log-sum-exp
parameterisation ``log L̂ = LSE(a − α log N, b − β log D, e)`` (A = e^a, B = e^b, E = e^e), minimised with
L-BFGS from a grid of initialisations, keeping the best. Confidence intervals come from a bootstrap over
points (resample, refit, percentiles). isoFLOP minima (approach 2) get a delta-method interval instead: in
simulation a residual bootstrap of a 4-6 point parabola covered the true minimum far below its nominal rate.

Everything here works on arrays; ``tinylm.analysis.scaling`` applies it to a trials DataFrame.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid: α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}.
GRID_EXP = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_LOGCOEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# Single-variable fits also try small exponents: L(C) exponents are ~0.05 (Kaplan et al. 2020).
GRID_EXP_1D = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)
# A fitted exponent outside this range is flagged: published LM exponents lie around 0.05-0.5.
EXPONENT_RANGE = (0.01, 2.0)


class NotEnoughPoints(ValueError):
    """The data cannot identify the law (too few points or distinct values); the message says what is missing."""


@dataclass(eq=False)
class PowerLawFit:
    """A fitted law. ``params`` in natural units (E, A, alpha [, B, beta]); ``ci`` maps each to (lo, hi)."""

    form: str  # "L(N)", "L(D)", "L(C)", "L(N,D)" — used for display only
    variables: tuple[str, ...]  # e.g. ("N",) or ("N", "D")
    params: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    level: float = 0.95
    n_points: int = 0
    objective: float = float("nan")  # Σ Huber_δ(residual) / δ at the optimum
    boot: np.ndarray | None = None  # (n_boot, n_params) natural-unit parameters, columns in ``params`` order
    n_boot_failed: int = 0

    def warnings(self) -> list[str]:
        """Plausibility checks a reader needs before trusting the law: published LM exponents lie around
        0.05-0.5 (Kaplan et al. 2020: alpha_N ~ 0.076; Hoffmann et al. 2022: alpha ~ 0.34, beta ~ 0.28)."""
        out = []
        for name in ("alpha", "beta"):
            v = self.params.get(name)
            if v is not None and not EXPONENT_RANGE[0] <= v <= EXPONENT_RANGE[1]:
                out.append(f"{name} = {v:.3g} is far outside the exponents seen in LM scaling studies (~0.05-0.5): "
                           "these points do not follow a power law (undertrained or non-monotone points, e.g. too "
                           "few tokens per parameter for the larger models); do not extrapolate from this fit")
        return out

    def predict(self, *xs: np.ndarray) -> np.ndarray:
        """L̂ at the given values, one array per variable (N, D for the Chinchilla form)."""
        return predict(self.params, *xs)

    def formula(self) -> str:
        p = self.params
        terms = [f"{p['A']:.4g}/{self.variables[0]}^{p['alpha']:.3f}"]
        if "B" in p:
            terms.append(f"{p['B']:.4g}/{self.variables[1]}^{p['beta']:.3f}")
        return f"{self.form} = {p['E']:.4g} + " + " + ".join(terms)

    def table(self) -> list[tuple[str, float, float, float]]:
        """(name, value, ci_lo, ci_hi) rows in a stable order."""
        nan = float("nan")
        return [(k, v, *self.ci.get(k, (nan, nan))) for k, v in self.params.items()]


def predict(params: dict[str, float], *xs: np.ndarray) -> np.ndarray:
    out = params["E"] + params["A"] * np.asarray(xs[0], float) ** -params["alpha"]
    if "B" in params:
        out = out + params["B"] * np.asarray(xs[1], float) ** -params["beta"]
    return out


# --- the objective ---------------------------------------------------------------------------------------------
def _unpack(theta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """theta = [e, a_1..a_k, α_1..α_k] (rows of a 2-D array for many parameter vectors at once)."""
    return theta[..., 0], theta[..., 1:1 + k], theta[..., 1 + k:1 + 2 * k]


def _terms(theta: np.ndarray, logx: np.ndarray) -> np.ndarray:
    """The log-sum-exp terms (..., n, k+1): e and a_j − α_j·log x_j."""
    k = logx.shape[1]
    e, a, alpha = _unpack(theta, k)
    t = a[..., None, :] - alpha[..., None, :] * logx  # (..., n, k)
    e = np.broadcast_to(np.asarray(e)[..., None, None], t.shape[:-1] + (1,))
    return np.concatenate([e, t], axis=-1)


def _lse(t: np.ndarray) -> np.ndarray:
    """log Σ exp over the last axis (scipy.special.logsumexp costs ~10× more per call on small arrays)."""
    m = t.max(axis=-1)
    return m + np.log(np.exp(t - m[..., None]).sum(axis=-1))


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def objective(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Σ Huber_δ(LSE(terms) − log L) / δ, vectorised over leading axes of ``theta``.

    Dividing by δ leaves the minimiser unchanged and puts the objective near 1 per point, where L-BFGS's
    default tolerances are meaningful.
    """
    r = _lse(_terms(theta, logx)) - logy
    return _huber(r, delta).sum(axis=-1) / delta


def _objective_and_grad(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float):
    """``objective`` for one parameter vector, with its analytic gradient (the hot loop of every fit)."""
    k = logx.shape[1]
    t = np.empty((len(logy), k + 1))
    t[:, 0] = theta[0]
    t[:, 1:] = theta[1:1 + k] - theta[1 + k:] * logx
    m = t.max(axis=1)
    w = np.exp(t - m[:, None])
    s = w.sum(axis=1)
    r = m + np.log(s) - logy
    w /= s[:, None]  # softmax weights: d pred / d term
    dh = np.clip(r, -delta, delta) / delta  # Huber'(r) / δ
    g = dh[:, None] * w  # (n, k+1)
    grad = np.empty(1 + 2 * k)
    grad[:1 + k] = g.sum(axis=0)
    grad[1 + k:] = -(g[:, 1:] * logx).sum(axis=0)
    a = np.abs(r)
    f = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum() / delta
    return float(f), grad


def _grid(k: int) -> np.ndarray:
    exps = GRID_EXP if k > 1 else GRID_EXP_1D
    rows = [(e, *a, *al) for e in GRID_E for a in itertools.product(GRID_LOGCOEF, repeat=k)
            for al in itertools.product(exps, repeat=k)]
    return np.asarray(rows, dtype=float)


def _lbfgs(theta0: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    res = minimize(_objective_and_grad, theta0, args=(logx, logy, delta), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
    return res.x, float(res.fun)


def _best_fit(logx: np.ndarray, logy: np.ndarray, inits: np.ndarray, n_starts: int | None,
              delta: float, extra: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """L-BFGS from the ``n_starts`` grid points with the lowest initial objective (all when None), plus
    ``extra`` starts; the lowest final objective wins (ties to the earlier start, so results are stable)."""
    if n_starts == 0:
        inits = inits[:0]
    elif n_starts is not None and n_starts < len(inits):
        order = np.argsort(objective(inits, logx, logy, delta), kind="stable")[:n_starts]
        inits = inits[order]
    if extra is not None:
        inits = np.vstack([extra[None, :], inits])
    best, best_f = (inits[0] if len(inits) else extra), np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        for theta0 in inits:
            theta, f = _lbfgs(theta0, logx, logy, delta)
            if np.isfinite(f) and f < best_f - 1e-12:
                best, best_f = theta, f
    return best, best_f


def _natural(theta: np.ndarray, k: int) -> np.ndarray:
    """[e, a_1..a_k, α_1..α_k] -> [E, A_1..A_k, α_1..α_k]."""
    out = np.array(theta, dtype=float)
    out[..., :1 + k] = np.exp(out[..., :1 + k])
    return out


def _names(k: int) -> list[str]:
    return ["E", "A", "alpha"] if k == 1 else ["E", "A", "B", "alpha", "beta"]


def _check(xs: list[np.ndarray], y: np.ndarray, names: tuple[str, ...], min_points: int,
           min_distinct: int, form: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.column_stack([np.asarray(v, dtype=float).ravel() for v in xs])
    y = np.asarray(y, dtype=float).ravel()
    if len(x) != len(y):
        raise ValueError(f"{form}: {len(x)} x values but {len(y)} losses")
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y) & (x > 0).all(axis=1) & (y > 0)
    x, y = x[ok], y[ok]
    for j, name in enumerate(names):
        distinct = np.unique(np.round(np.log(x[:, j]), 2))  # values within ~1% count as one
        if len(distinct) < min_distinct:
            vals = ", ".join(f"{v:.3g}" for v in np.exp(distinct))
            raise NotEnoughPoints(f"{form} needs at least {min_distinct} distinct {name}; got {len(distinct)}"
                                  + (f" ({vals})" if vals else ""))
    if len(y) < min_points:
        raise NotEnoughPoints(f"{form} needs at least {min_points} points with finite, positive values; "
                              f"got {len(y)}")
    return x, y


def _fit(x: np.ndarray, y: np.ndarray, form: str, variables: tuple[str, ...], n_boot: int, seed: int,
         level: float, n_starts: int | None, n_starts_boot: int, delta: float) -> PowerLawFit:
    k = x.shape[1]
    logx, logy = np.log(x), np.log(y)
    grid = _grid(k)
    theta, f = _best_fit(logx, logy, grid, n_starts, delta)
    names = _names(k)
    params = dict(zip(names, (float(v) for v in _natural(theta, k)), strict=True))
    fit = PowerLawFit(form=form, variables=variables, params=params, level=level, n_points=len(y), objective=f)
    if n_boot <= 0:
        return fit
    rng = np.random.default_rng(seed)
    boots, failed = [], 0
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        # Refit from the full-data optimum plus the best few grid points on this resample: a bootstrap fit
        # stays in the optimum's basin almost always, and the grid starts catch the cases where it does not.
        tb, fb = _best_fit(logx[idx], logy[idx], grid, n_starts_boot, delta, extra=theta)
        if np.isfinite(fb):
            boots.append(_natural(tb, k))
        else:
            failed += 1
    fit.boot = np.asarray(boots)
    fit.n_boot_failed = failed
    if len(boots):
        lo, hi = np.percentile(fit.boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
        fit.ci = {n: (float(a), float(b)) for n, a, b in zip(names, lo, hi, strict=True)}
    return fit


def fit_power_law(x: np.ndarray, y: np.ndarray, *, name: str = "N", min_distinct: int = 4, n_boot: int = 200,
                  seed: int = 0, level: float = 0.95, n_starts: int | None = 8, n_starts_boot: int = 0,
                  delta: float = HUBER_DELTA) -> PowerLawFit:
    """Fit L(x) = E + A·x^-α.

    Args:
        x: N (total or non-embedding params), D (tokens) or C (FLOPs), one value per point.
        y: loss per point (natural log units).
        name: the variable's name, used in the form ("L(N)") and in messages.
        min_distinct: refuse (``NotEnoughPoints``) with fewer distinct x: three parameters need four values.
        n_boot: bootstrap resamples for the confidence intervals (0: none).
        seed: bootstrap RNG seed.
        level: two-sided confidence level of the percentile intervals.
        n_starts: L-BFGS starts taken from the 240-point initialisation grid, best initial objective first
            (None: all; 4 already found the same optimum as all 240 on every synthetic data set we tried).
        n_starts_boot: grid starts per bootstrap refit besides the full-data optimum, which every refit starts
            from (a resample stays in the optimum's basin; grid starts cost ~10× more and changed no interval in
            our tests).
        delta: Huber δ on log-loss residuals.
    """
    xa, ya = _check([x], y, (name,), min_distinct, min_distinct, f"L({name})")
    return _fit(xa, ya, f"L({name})", (name,), n_boot, seed, level, n_starts, n_starts_boot, delta)


def fit_chinchilla(n: np.ndarray, d: np.ndarray, y: np.ndarray, *, min_points: int = 6, min_distinct: int = 3,
                   n_boot: int = 200, seed: int = 0, level: float = 0.95, n_starts: int | None = 16,
                   n_starts_boot: int = 0, delta: float = HUBER_DELTA) -> PowerLawFit:
    """Fit L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, approach 3; Besiroglu et al. 2024).

    Args:
        n: parameters per point (Hoffmann et al. count all parameters, embeddings included).
        d: training tokens per point.
        y: final loss per point.
        min_points: refuse (``NotEnoughPoints``) with fewer points: five parameters need more than five.
        min_distinct: refuse with fewer distinct N or distinct D.
        n_starts: L-BFGS starts from the 4500-point grid, best initial objective first (None: all 4500, as the
            papers did, ~0.1 s each; 8 found the same optimum as 256 on every synthetic data set we tried).
        Other arguments as in ``fit_power_law``.
    """
    x, ya = _check([n, d], y, ("N", "D"), min_points, min_distinct, "L(N,D)")
    return _fit(x, ya, "L(N,D)", ("N", "D"), n_boot, seed, level, n_starts, n_starts_boot, delta)


# --- what the fitted law implies ---------------------------------------------------------------------------------
def compute_optimal(fit: PowerLawFit, c: float | np.ndarray, flops_per_param_token: float = 6.0) -> dict:
    """The compute-optimal allocation under C = 6·N·D implied by a Chinchilla fit (Hoffmann et al. eq. 4):
    N_opt = G·(C/6)^(β/(α+β)), D_opt = (C/6)/N_opt, G = (αA / βB)^(1/(α+β)).

    Returns ``{"C", "N_opt", "D_opt", "tokens_per_param", "loss"}`` and, when the fit has bootstrap samples,
    ``"<key>_ci": (lo, hi)`` for each derived quantity.
    """
    if "B" not in fit.params:
        raise ValueError(f"compute_optimal needs the L(N,D) form; got {fit.form}")
    c = np.asarray(c, dtype=float)

    def alloc(E, A, B, alpha, beta):
        g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        n_opt = g * (c / flops_per_param_token) ** (beta / (alpha + beta))
        d_opt = c / flops_per_param_token / n_opt
        return {"N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt,
                "loss": E + A * n_opt ** -alpha + B * d_opt ** -beta}

    p = fit.params
    out: dict = {"C": c, **alloc(p["E"], p["A"], p["B"], p["alpha"], p["beta"])}
    if fit.boot is not None and len(fit.boot):
        b = fit.boot  # columns E, A, B, alpha, beta
        with np.errstate(all="ignore"):
            samples = [alloc(*row) for row in b]
        for key in ("N_opt", "D_opt", "tokens_per_param", "loss"):
            vals = np.asarray([s[key] for s in samples], dtype=float)
            lo, hi = np.nanpercentile(vals, [50 * (1 - fit.level), 50 * (1 + fit.level)], axis=0)
            out[f"{key}_ci"] = (lo, hi)
    return out


def budgets(c: np.ndarray, rel_tol: float = 0.1) -> np.ndarray:
    """Group FLOP values into budgets: sorted, a new budget starts more than ``rel_tol`` above the current
    budget's first value. Returns one integer label per input, in increasing order of budget."""
    c = np.asarray(c, dtype=float)
    order = np.argsort(c, kind="stable")
    lab = np.empty(len(c), dtype=int)
    cur, start = -1, None
    for i in order:
        if start is None or c[i] > start * (1 + rel_tol):
            cur, start = cur + 1, c[i]
        lab[i] = cur
    return lab


def parabola_minimum(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """The argmin of a least-squares parabola y ≈ a2·x² + a1·x + a0 and its delta-method interval.

    x* = −a1 / (2·a2); its standard error comes from the coefficients' covariance s²·(VᵀV)⁻¹ (s² on n − 3 d.o.f.)
    through the gradient of x*, and the interval is x* ± t_{n−3}·se. ``y`` is (n,) or (n, sims): every column is
    fitted against the same ``x`` at once. Returns arrays ``a2, x_opt, y_min`` (the parabola at x*), ``se, lo, hi,
    opens_up, bracketed`` (x* inside [min x, max x]); ``se``, ``lo``, ``hi`` are NaN with n = 3 (no d.o.f. for the
    noise) or a downward parabola."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    v = np.vander(x, 3)  # columns x², x, 1
    vinv = np.linalg.pinv(v)
    a2, a1, a0 = coef = vinv @ y
    resid = y - v @ coef
    dof = n - 3
    opens_up = a2 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        x_opt = np.where(opens_up, -a1 / (2 * a2), np.nan)
        s2 = (resid ** 2).sum(axis=0) / dof if dof > 0 else np.full(np.shape(a2), np.nan)
        g = np.stack([a1 / (2 * a2 ** 2), -1 / (2 * a2), np.zeros_like(a2)])  # ∂x*/∂(a2, a1, a0)
        cov = vinv @ vinv.T  # (VᵀV)⁻¹
        se = np.sqrt(s2 * np.einsum("i...,ij,j...->...", g, cov, g))
        half = float(sps.t.ppf(0.5 + level / 2, dof)) * se if dof > 0 else np.full(np.shape(a2), np.nan)
    se = np.where(opens_up, se, np.nan)
    return {"a2": a2, "x_opt": x_opt, "y_min": a0 + a1 * x_opt / 2, "se": se, "lo": x_opt - half,
            "hi": x_opt + half, "opens_up": opens_up, "bracketed": opens_up & (x.min() <= x_opt) & (x_opt <= x.max())}


def isoflop_minima(c: np.ndarray, n: np.ndarray, y: np.ndarray, *, rel_tol: float = 0.1,
                   min_per_budget: int = 3, level: float = 0.95) -> list[dict]:
    """Hoffmann et al.'s approach 2: group runs by FLOP budget, fit a parabola of loss in log N per budget, report
    its argmin N_opt only where the data can know it: the parabola opens upward AND its minimum lies inside the
    sampled N (``bracketed``). Otherwise ``N_opt``/``D_opt`` are NaN and ``reason`` says why (a parabola that opens
    down has no minimum; an argmin outside the sampled sizes is an extrapolation of a quadratic, not a measurement).
    Budgets with fewer than ``min_per_budget`` distinct N are left out. Raises ``NotEnoughPoints`` when no budget
    has enough distinct N.

    ``N_opt_ci``: the ``level`` delta-method interval of ``parabola_minimum`` mapped through exp (None with three
    sizes: no d.o.f. left for the noise)."""
    c, n, y = (np.asarray(v, dtype=float).ravel() for v in (c, n, y))
    ok = np.isfinite(c) & np.isfinite(n) & np.isfinite(y) & (c > 0) & (n > 0)
    c, n, y = c[ok], n[ok], y[ok]
    lab = budgets(c, rel_tol)
    rows = []
    for b in np.unique(lab):
        m = lab == b
        ln = np.log(n[m])
        if len(np.unique(np.round(ln, 2))) < min_per_budget:
            continue
        cb = float(np.exp(np.log(c[m]).mean()))
        fit = parabola_minimum(ln, y[m], level)
        row = {"C": cb, "n_points": int(m.sum()), "N_opt": np.nan, "D_opt": np.nan, "loss_min": float(y[m].min()),
               "bracketed": bool(fit["bracketed"]), "N_opt_ci": None, "reason": ""}
        if not fit["opens_up"]:
            row["reason"] = "the parabola opens downward: no minimum"
        elif not fit["bracketed"]:
            row["reason"] = (f"the parabola's minimum (N ≈ {np.exp(fit['x_opt']):.3g}) lies outside the sampled sizes "
                             f"{n[m].min():.3g}-{n[m].max():.3g}: not bracketed")
        else:
            n_opt = float(np.exp(fit["x_opt"]))
            row.update(N_opt=n_opt, D_opt=cb / (6 * n_opt), loss_min=float(fit["y_min"]))
            if np.isfinite(fit["lo"]):
                row["N_opt_ci"] = (float(np.exp(fit["lo"])), float(np.exp(fit["hi"])))
        rows.append(row)
    if not rows:
        raise NotEnoughPoints(f"isoFLOP minima need a FLOP budget with at least {min_per_budget} distinct N; "
                              f"found {len(np.unique(lab))} budget(s) without one")
    return rows


def isoflop_exponents(rows: list[dict]) -> dict[str, float]:
    """N_opt ∝ C^a and D_opt ∝ C^b from isoFLOP minima (log-log least squares) over the budgets with a bracketed
    minimum; needs two. ``n_excluded``: budgets left out (no minimum, or not bracketed)."""
    good = [r for r in rows if r["bracketed"] and np.isfinite(r["N_opt"])]
    if len(good) < 2:
        raise NotEnoughPoints(f"isoFLOP exponents need at least 2 budgets with a bracketed minimum; got {len(good)} "
                              f"of {len(rows)}")
    lc = np.log([r["C"] for r in good])
    a = float(np.polyfit(lc, np.log([r["N_opt"] for r in good]), 1)[0])
    b = float(np.polyfit(lc, np.log([r["D_opt"] for r in good]), 1)[0])
    return {"a": a, "b": b, "n_budgets": len(good), "n_excluded": len(rows) - len(good)}
