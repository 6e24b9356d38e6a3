"""Example churn models trained on a synthetic world, so the demo and the tests need no committed pickles.

A row describes one subscriber; the columns, in `FEATURES` order:

- ``tenure_months``: months since sign-up (0..72)
- ``monthly_charges``: the monthly bill in currency units (18..120)
- ``support_calls``: support calls in the last 90 days (0, 1, 2, ...)
- ``usage_drop``: fall of usage over the last 30 days relative to the 30 before (0..1)

The label is 1 when the subscriber churns within the next month (about one in four do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FEATURES: Final = ("tenure_months", "monthly_charges", "support_calls", "usage_drop")
N_FEATURES: Final = 4

Features = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]
Builder = Callable[[Features, Labels], Any]


def churn_probability(X: Features) -> Features:
    """The true churn probability of the synthetic world; the example model server answers with it without a file."""
    tenure, charges, calls, drop = X.T
    logit = -1.6 - 0.04 * tenure + 0.015 * (charges - 65.0) + 0.3 * calls + 2.0 * drop
    # A threshold and an interaction a linear model cannot express, so the boosted candidate has something to win.
    logit = logit + 1.5 * (tenure < 6) + 2.5 * ((calls >= 3) & (drop > 0.4))
    probability: Features = 1.0 / (1.0 + np.exp(-logit))
    return probability


def make_dataset(n_samples: int = 5000, seed: int = 0) -> tuple[Features, Labels]:
    """Draw subscribers and their churn labels; the same seed always gives the same data."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            np.clip(rng.gamma(2.0, 12.0, n_samples), 0.0, 72.0),
            np.clip(rng.normal(65.0, 20.0, n_samples), 18.0, 120.0),
            rng.poisson(1.5, n_samples).astype(np.float64),
            rng.beta(2.0, 5.0, n_samples),
        ]
    )
    y = (rng.random(n_samples) < churn_probability(X)).astype(np.int64)
    return X, y


def build_current(X: Features, y: Labels) -> Pipeline:
    """The incumbent: a scaled logistic regression, fast and easy to explain."""
    return Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=1000))]).fit(X, y)


def build_candidate(X: Features, y: Labels) -> HistGradientBoostingClassifier:
    """The challenger: shallow boosted trees that can learn the interaction the incumbent misses."""
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=8, learning_rate=0.1, random_state=0)
    return model.fit(X, y)


MODELS: Final[Mapping[str, Builder]] = MappingProxyType(
    {"churn_current": build_current, "churn_candidate": build_candidate}
)
