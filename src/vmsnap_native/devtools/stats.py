"""Small statistics for the benchmarks (median, percentiles, a summary)."""

from __future__ import annotations


def percentile(values, p: float):
    """Nearest-rank percentile; None for no values."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def summary(values) -> dict:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"n": 0, "min": None, "median": None, "p95": None, "p99": None, "max": None}
    return {"n": len(xs), "min": round(min(xs), 3), "median": round(percentile(xs, 50), 3),
            "p95": round(percentile(xs, 95), 3), "p99": round(percentile(xs, 99), 3),
            "max": round(max(xs), 3)}


def ratio(a, b):
    if a is None or not b:
        return None
    return round(a / b, 3)
