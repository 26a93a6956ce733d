"""Latency histograms of the load generator (node/load.mjs): 1%-wide log buckets."""

from __future__ import annotations


def pct(hist: dict, q: float) -> float | None:
    """A percentile (ms) from the load generator's log histogram (1% buckets)."""
    n = hist.get("n", 0)
    if not n:
        return None
    rank = q * n
    seen = 0
    for k in sorted(hist["buckets"], key=int):
        seen += hist["buckets"][k]
        if seen >= rank:
            return 0.01 * 1.01 ** int(k)
    return hist.get("max")


def merge_hists(hists: list[dict]) -> dict:
    out = {"n": 0, "max": 0, "buckets": {}}
    for h in hists:
        out["n"] += h.get("n", 0)
        out["max"] = max(out["max"], h.get("max", 0))
        for k, v in h.get("buckets", {}).items():
            out["buckets"][k] = out["buckets"].get(k, 0) + v
    return out


def summarize_hist(h: dict) -> dict:
    r = lambda x: None if x is None else round(x, 2)  # noqa: E731
    return {"n": h["n"], "p50_ms": r(pct(h, 0.50)), "p90_ms": r(pct(h, 0.90)),
            "p99_ms": r(pct(h, 0.99)), "max_ms": r(h.get("max"))}
