"""How close two arrays of logits for the same inputs are: one graph on two runtimes, one precision on two GPU kinds,
a graph and its folded copy."""

from __future__ import annotations

import numpy as np

__all__ = ["logit_parity"]


def logit_parity(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement as a fraction, rel. L2 of got against ref, in float64)."""
    agreement = float((got.argmax(1) == ref.argmax(1)).mean())
    diff = np.linalg.norm(got.astype(np.float64) - ref.astype(np.float64))
    return agreement, float(diff / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))
