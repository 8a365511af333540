"""fastopt.sklearn's estimators: scikit-learn's estimator checks, use in its tools, agreement with its MLPs."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastopt.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

CHECKED = [
    MLPClassifier(max_iter=50, random_state=0, dtype="float64"),
    MLPRegressor(max_iter=50, random_state=0, dtype="float64"),
    MLPClassifier(max_iter=50, random_state=0, dtype="float64", solver="lbfgs"),
    MLPRegressor(max_iter=50, random_state=0, dtype="float64", solver="sgd"),
]


@parametrize_with_checks(CHECKED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
