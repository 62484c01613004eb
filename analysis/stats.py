"""Means and Student-t confidence intervals over seeds, with no scipy.

CI method (used by every figure and table): for n replicate seeds with sample mean m and sample
standard deviation s (ddof=1), the 95% interval is m ± t(0.975, n-1) · s / sqrt(n), where t is the
Student-t quantile. With n = 1 there is no interval (half-width NaN, no band drawn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

CI_METHOD = (
    "95% CI: Student-t interval over seeds, mean ± t(0.975, n−1)·s/√n with s the sample standard "
    "deviation (n−1 denominator); no interval when n = 1."
)


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student-t with integer ``df`` (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for j in range(2, df - 1, 2):  # 1 + 2/3 c^2 + (2·4)/(3·5) c^4 + ...
            term *= j / (j + 1) * c2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for j in range(1, df - 2, 2):  # 1 + 1/2 c^2 + (1·3)/(2·4) c^4 + ...
        term *= j / (j + 1) * c2
        total += term
    return math.sin(theta) * total


@cache
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student-t with ``df`` >= 1 degrees of freedom, by bisection."""
    if df < 1:
        raise ValueError(f"df={df}: degrees of freedom must be >= 1")
    if not 0.5 < p < 1.0:
        raise ValueError(f"p={p}: expected 0.5 < p < 1")
    mass = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < mass:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < mass else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class Summary:
    """Mean of n replicates and the half-width of its 95% t interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean and Student-t CI half-width of the finite ``values``; see the module docstring."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(mean, math.nan, 1)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n), n)
