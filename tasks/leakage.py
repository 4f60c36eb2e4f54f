"""Target leakage: how closely one feature reproduces the target, scored from 0 to 1.

    score, how = leakage_score(frame["charges"], frame["churned"], task="classification")
    target = Target(frame["churned"], task="classification")     # prepared once, for every column
    scores = {name: target.score(frame[name]) for name in features}

Validation's `expect_no_target_leakage` fails a training set where a feature scores above
`validation.leakage_threshold`: a copy of the target under another name, the target plus noise, a
monotone transform of it. Plain numpy over pandas columns: one sort per feature.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

MAX_LEVELS = 50  # numeric columns with at most this many values are also checked for purity
MIN_SUPPORT = 20  # rows per value (or per class) below which a score says nothing


def leakage_score(feature: pd.Series, target: pd.Series, *, task: str) -> tuple[float, str]:
    """How closely one feature reproduces the target, 0 (not at all) to 1 (exactly), and how.

    Classification: a numeric feature's AUC alone (on the better side of 0.5; with more than
    two classes, the lowest AUC between classes that are neighbours along the feature: 1 when
    thresholds cut the feature into one interval per class), and the purity of a feature's values
    (Goodman-Kruskal lambda: the share of the majority-class error that knowing the value
    removes). Regression: |Pearson| and |Spearman| correlation of a numeric feature (Spearman
    catches a monotone copy such as exp, cube or log of the target), the correlation ratio of a
    categorical one, or, for high-cardinality text, both correlations of its values read as
    numbers. Purity, correlation ratio and AUC need `MIN_SUPPORT` rows per value or class: an
    id-like column is "pure" by construction and says nothing.
    """
    return Target(target, task=task).score(feature)


class Target:
    """A target's labelled rows, prepared once to score every feature against it."""

    def __init__(self, target: pd.Series, *, task: str) -> None:
        labelled = target.notna().to_numpy()
        self.mask = None if labelled.all() else labelled  # None: every row is labelled
        y = target if self.mask is None else target[self.mask]
        self.rows = len(y)
        self.classes = pd.factorize(y, sort=True)[0] if task == "classification" else None
        self.binary = self.classes is not None and int(self.classes.max(initial=0)) == 1
        self.values = _floats(y) if self.classes is None else np.empty(0)  # regression

    def score(self, feature: pd.Series) -> tuple[float, str]:
        if self.rows < 3:
            return 0.0, "too few labelled rows"
        x = feature if self.mask is None else feature[self.mask]
        numeric = pd.api.types.is_numeric_dtype(x.dtype) and not pd.api.types.is_bool_dtype(x.dtype)
        scores = self._numeric(_floats(x)) if numeric else self._categorical(x)
        score, how = max(scores, default=(0.0, "not comparable"))
        return round(float(score), 4), how

    def _numeric(self, x: np.ndarray) -> list[tuple[float, str]]:
        if self.classes is None:
            return _correlations(x, self.values)
        auc, levels = _separability(x, self.classes)
        scores = [(auc, "AUC" if self.binary else "AUC between neighbouring classes")]
        if levels <= MAX_LEVELS and levels * MIN_SUPPORT <= len(x):
            scores.append(
                (_purity(pd.factorize(x, use_na_sentinel=False)[0], self.classes), "purity")
            )
        return scores

    def _categorical(self, x: pd.Series) -> list[tuple[float, str]]:
        codes, levels = pd.factorize(x, use_na_sentinel=False)
        if len(levels) * MIN_SUPPORT <= len(x):
            if self.classes is not None:
                return [(_purity(codes, self.classes), "purity")]
            return [(_correlation_ratio(codes, self.values), "correlation ratio")]
        if self.classes is not None:
            return []
        parsed = _floats(pd.to_numeric(x.astype("string"), errors="coerce"))
        if np.isfinite(parsed).mean() < 0.5:
            return []
        found = _correlations(parsed, self.values)
        return [(s, f"{how} of values read as numbers") for s, how in found]


def _floats(values: pd.Series) -> np.ndarray:
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _ranks(x: np.ndarray) -> np.ndarray:
    """The 1-based ranks of `x`, ties averaged (what Spearman's correlation needs)."""
    order = np.argsort(x)
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def _correlations(x: np.ndarray, y: np.ndarray) -> list[tuple[float, str]]:
    """|Pearson| and |Spearman| (Pearson of the ranks) over the rows where both are finite."""
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.all():
        x, y = x[keep], y[keep]
    return [
        (_correlation(x, y), "correlation"),
        (_correlation(_ranks(x), _ranks(y)), "rank correlation"),
    ]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return abs(float(np.corrcoef(a, b)[0, 1]))


def _separability(x: np.ndarray, classes: np.ndarray) -> tuple[float, int]:
    """How well `x` alone puts the classes apart, and its number of distinct values (NaN counts
    as one).

    The AUC (max of AUC and 1 - AUC, ties counting half) between each two classes that are
    neighbours in `x`'s order (by median), the lowest of them, over the classes with
    `MIN_SUPPORT` rows. Binary: the feature's AUC. Multiclass: 1 when every class has an interval
    of `x` to itself (the target, however coded), but not when one class stands apart and the
    others overlap (iris' petal width sets off setosa alone: a strong feature, not a copy).
    """
    keep = np.isfinite(x)
    nan_level = int(not keep.all())
    if nan_level:
        x, classes = x[keep], classes[keep]
    if len(x) < 3:
        return 0.0, len(x) + nan_level
    order = np.argsort(x, kind="stable")
    ordered, ordered_classes = x[order], classes[order]
    levels = 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1]))
    groups = [ordered[ordered_classes == c] for c in np.unique(ordered_classes)]  # each sorted
    groups = sorted((g for g in groups if len(g) >= MIN_SUPPORT), key=lambda g: g[len(g) // 2])
    if len(groups) < 2:
        return 0.0, levels + nan_level
    return min(_auc(a, b) for a, b in itertools.pairwise(groups)), levels + nan_level


def _auc(low: np.ndarray, high: np.ndarray) -> float:
    """The AUC between two sorted samples, on its better side: P(high > low), ties one half."""
    below = np.searchsorted(low, high, side="left")
    up_to = np.searchsorted(low, high, side="right")
    auc = float(below.sum() + up_to.sum()) / (2.0 * len(low) * len(high))
    return max(auc, 1.0 - auc)


def _purity(codes: np.ndarray, classes: np.ndarray) -> float:
    """Goodman-Kruskal lambda of the classes given a feature's value codes."""
    k = int(classes.max()) + 1
    levels = int(codes.max()) + 1
    counts = np.bincount(codes * k + classes, minlength=levels * k).reshape(-1, k)
    correct = int(counts.max(axis=1).sum())  # predicting each value's majority class
    majority, n = int(np.bincount(classes).max()), len(classes)  # predicting one class
    return (correct - majority) / (n - majority) if n > majority else 0.0


def _correlation_ratio(codes: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(y)
    codes, y = codes[keep], y[keep]
    if len(y) < 3:
        return 0.0
    counts = np.bincount(codes)
    means = np.bincount(codes, weights=y) / np.maximum(counts, 1)
    total = float(((y - y.mean()) ** 2).sum())
    between = float((counts * (means - y.mean()) ** 2).sum())
    return float(np.sqrt(between / total)) if total > 0 else 0.0
