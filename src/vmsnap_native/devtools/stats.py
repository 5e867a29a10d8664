"""Small statistics for the benchmarks: a summary that names its figures for
what they are.  With 20-30 rounds the "99th percentile" is simply the
largest value, so a percentile is reported only when there are enough
values for it to be something else; the largest is always there as "max"
(of "n")."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

# the percentiles a summary may report
SUMMARY_PERCENTILES = (95, 99)


def percentile(values: Iterable[float | None], p: float) -> float | None:
    """Nearest-rank percentile (the ceil(P% of n)-th smallest); None for no values."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, math.ceil(p * len(xs) / 100) - 1))
    return xs[k]


def enough_for(p: float, n: int) -> bool:
    """Whether N values give a P-th percentile that is not just their
    maximum (nearest rank: at least 100 / (100 - P) values)."""
    return n * (100 - p) >= 100


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """{n, min, median, max} of VALUES (Nones dropped), plus "p95"/"p99"
    where there are enough values (``enough_for``)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"n": 0, "min": None, "median": None, "max": None}
    out: dict[str, Any] = {"n": len(xs), "min": round(min(xs), 3),
                           "median": round(statistics.median(xs), 3)}
    for p in SUMMARY_PERCENTILES:
        if enough_for(p, len(xs)):
            value = percentile(xs, p)
            assert value is not None   # xs has values
            out["p%d" % p] = round(value, 3)
    out["max"] = round(max(xs), 3)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)
