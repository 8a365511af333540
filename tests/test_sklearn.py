"""fastopt.sklearn's estimators: scikit-learn's estimator checks, use in its tools (pipelines, searches,
cross-validation, clone, pickle, joblib), targets and inputs of every kind, and agreement with scikit-learn's MLPs.

Agreement: fastopt's estimators draw the initial parameters, the validation split and the batches from
``random_state`` exactly as scikit-learn does, so in float64 the same seed gives the same run; the losses of the
first iterations are compared to a relative 1e-9 (summation orders differ between the two GEMM paths: about 1e-15
per operation, grown by the iterations, measured below 1e-11 here)."""

from __future__ import annotations

import os
import pickle
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sklearn", minversion="1.7")  # 1.7: its MLPs take sample_weight (the agreement tests)

import sklearn.neural_network as reference
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler
from sklearn.utils import shuffle
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastopt
from fastopt.sklearn import MLPClassifier, MLPRegressor

AGREEMENT_RTOL = 1e-9
# The float32 estimators' predictions after a fit with integer sample weights against a fit on the rows repeated: the
# two sum the same terms in other orders and over batches of other shapes, so their float32 weights differ by
# rounding, and scikit-learn's check asks for rtol=1e-7, below float32's resolution (1.2e-7). On the check's recipe
# with 10 other seeds the predictions differed by up to 1.5e-7 (classifier) and 9.8e-7 (regressor) relative, medians
# 5e-8 to 1.2e-7 (2-core AMD EPYC Zen 4). The float32 tolerance: 64 float32 ulps of relative difference.
FLOAT32_WEIGHT_RTOL = 64 * float(np.finfo(np.float32).eps)
CHECKED = [
    MLPClassifier(max_iter=50, random_state=0, dtype="float64"),
    MLPRegressor(max_iter=50, random_state=0, dtype="float64"),
    MLPClassifier(max_iter=50, random_state=0, dtype="float64", solver="lbfgs"),
    MLPRegressor(max_iter=50, random_state=0, dtype="float64", solver="sgd"),
    MLPClassifier(max_iter=50, random_state=0),
    MLPRegressor(max_iter=50, random_state=0),
]


@parametrize_with_checks(CHECKED)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if estimator.dtype == "float32" and check.func.__name__ == "check_sample_weight_equivalence_on_dense_data":
            _weights_equal_repeated_rows_to_float32_resolution(estimator, check)
        else:
            check(estimator)


def _weights_equal_repeated_rows_to_float32_resolution(estimator, check):
    """scikit-learn's check, and where it fails, its recipe again at FLOAT32_WEIGHT_RTOL: a skip that reports the
    difference when the two fits agree to float32's rounding, a failure when they do not."""
    try:
        check(estimator)
        return
    except AssertionError:
        pass
    rng = np.random.RandomState(42)
    X, y, weights = rng.rand(15, 30), rng.randint(0, 3, size=15), rng.randint(0, 5, size=15)
    repeated = clone(estimator).set_params(random_state=0).fit(X.repeat(weights, axis=0), y.repeat(weights))
    X_shuffled, y_shuffled, w_shuffled = shuffle(X, y, weights, random_state=0)
    weighted = clone(estimator).set_params(random_state=0).fit(X_shuffled, y_shuffled, sample_weight=w_shuffled)
    method = "predict_proba" if hasattr(estimator, "predict_proba") else "predict"
    expected, found = getattr(repeated, method)(X), getattr(weighted, method)(X)
    difference = float(np.max(np.abs(found - expected) / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)))
    np.testing.assert_allclose(found, expected, rtol=FLOAT32_WEIGHT_RTOL)
    pytest.skip(f"float32 training: the check failed; the weighted and the repeated fits' {method} differ by at most "
                f"{difference:.1e} relative, within float32's rounding ({FLOAT32_WEIGHT_RTOL:.1e}): the check's "
                "rtol=1e-7 is below float32's resolution")  # fmt: skip


def test_float32_weight_fallback_skips_rounding_and_fails_ignored_weights():
    """The fallback above, reached by a check that fails: it skips for fastopt's float32 estimators (their two fits
    agree to float32's rounding) and fails for an estimator that ignores its sample weights."""

    def failed_check(estimator):
        raise AssertionError("the check's rtol=1e-7")

    class IgnoresWeights(MLPRegressor):
        def fit(self, X, y, sample_weight=None):
            return super().fit(X, y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for estimator in (MLPClassifier(max_iter=50), MLPRegressor(max_iter=50)):
            with pytest.raises(pytest.skip.Exception, match="within float32's rounding"):
                _weights_equal_repeated_rows_to_float32_resolution(estimator, failed_check)
        with pytest.raises(AssertionError, match="Not equal to tolerance"):
            _weights_equal_repeated_rows_to_float32_resolution(IgnoresWeights(max_iter=50), failed_check)


# ------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return X[:600], y[:600], X[600:900], y[600:900]


@pytest.fixture(scope="module")
def blobs():
    return make_classification(200, 8, n_informative=5, n_classes=3, random_state=0)


def _quiet(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


# ------------------------------------------------------------------------------------------ scikit-learn's tools
def test_pipeline_cross_val_score_and_grid_search(blobs):
    X, y = blobs
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipeline, X, y, cv=3)
        search = GridSearchCV(
            pipeline, {"mlpclassifier__alpha": [1e-4, 1e-1], "mlpclassifier__hidden_layer_sizes": [(8,), (16,)]},
            cv=2, n_jobs=2,
        ).fit(X, y)  # fmt: skip
    assert scores.shape == (3,) and scores.min() > 0.5  # three balanced classes: chance is 1/3
    assert set(search.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__hidden_layer_sizes"}
    assert search.best_score_ > 0.5
    assert search.predict(X).shape == (200,)


def test_grid_search_runs_on_a_dask_cluster_through_joblib(blobs):
    """GridSearchCV over fastopt's estimator on a LocalCluster of two worker processes (joblib's Dask backend, as a
    study of ``fastopt compare`` uses one): every candidate's score equals the one of the same search in this
    process, since each fit is deterministic whatever process makes it."""
    distributed = pytest.importorskip("distributed")
    import joblib

    cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
    if cython_backend.gemm_path() != "direct":  # the workers run one BLAS thread, this process its default
        pytest.skip("equal scores across processes are promised on the direct GEMM path only (on the numpy.matmul "
                    f"path bits may depend on BLAS's thread count); here: {cython_backend.gemm_path()}")  # fmt: skip

    X, y = blobs
    grid = {"alpha": [1e-4, 1e-1], "hidden_layer_sizes": [(8,), (16,)]}
    estimator = MLPClassifier(max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = GridSearchCV(estimator, grid, cv=2).fit(X, y)
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None)  # fmt: skip
        with cluster, distributed.Client(cluster) as client, joblib.parallel_backend("dask"):
            remote = GridSearchCV(estimator, grid, cv=2, n_jobs=-1).fit(X, y)
            workers = set(client.scheduler_info()["workers"])
    assert len(workers) == 2
    assert np.array_equal(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_


def test_clone_keeps_parameters_not_the_fit(blobs):
    X, y = blobs
    fitted = _quiet(
        MLPClassifier(hidden_layer_sizes=(7, 5), alpha=0.3, solver="sgd", max_iter=5, dtype="float64"), X, y
    )
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "coefs_") and not hasattr(copy, "classes_")


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_pickle_and_joblib_copies_predict_and_continue_identically(blobs, tmp_path, solver):
    """A copy predicts as the original and, trained on by ``partial_fit``, stays bit-identical to it: the
    optimizer's state (Adam's moments, SGD's velocity) travels with the estimator."""
    joblib = pytest.importorskip("joblib")
    X, y = blobs
    original = _quiet(MLPClassifier(hidden_layer_sizes=(9,), solver=solver, max_iter=3, random_state=0), X, y)
    joblib.dump(original, tmp_path / "model.joblib")
    copies = [pickle.loads(pickle.dumps(original)), joblib.load(tmp_path / "model.joblib"),
              joblib.load(tmp_path / "model.joblib", mmap_mode="r")]  # fmt: skip
    for copy in copies:
        np.testing.assert_array_equal(copy.predict_proba(X), original.predict_proba(X))
    for estimator in [original, *copies]:
        estimator.partial_fit(X, y)
    for copy in copies:
        for mine, theirs in zip(copy.coefs_ + copy.intercepts_, original.coefs_ + original.intercepts_):
            np.testing.assert_array_equal(mine, theirs)


# ------------------------------------------------------------------------------------------ targets and inputs
@pytest.mark.parametrize(
    "labels",
    [np.array(["cat", "dog", "bird"]), np.array(["cat", "dog", "bird"], dtype=object), np.array([5, 7, 11]),
     np.array([-3, 0, 9], dtype=np.int8)],
    ids=["str", "object", "ints-not-from-0", "int8"],
)  # fmt: skip
def test_labels_of_any_type(blobs, labels):
    X, y = blobs
    y_labels = labels[y]
    model = _quiet(MLPClassifier(max_iter=30, random_state=0), X, y_labels)
    assert list(model.classes_) == sorted(set(y_labels.tolist()))
    assert set(model.predict(X)) <= set(model.classes_)
    assert model.predict_proba(X).shape == (200, 3)
    np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1.0, rtol=1e-12)
    assert model.score(X, y_labels) > 0.5


LABEL_POOLS = {
    "int": np.array([7, -2, 30, 5, 11]),
    "str": np.array(["b", "a", "dd", "c", "e"]),
    "object": np.array(["b", "a", "dd", "c", "e"], dtype=object),
    "float": np.array([0.0, -1.0, 2.0, 3.0, 9.0]),  # integral: scikit-learn takes others for regression targets
    "bool": np.array([True, False, True, False, True]),
}


@settings(max_examples=80, deadline=None)
@given(codes=st.lists(st.integers(0, 4), min_size=1, max_size=30), kind=st.sampled_from(sorted(LABEL_POOLS)),
       every_class=st.booleans())  # fmt: skip
def test_labels_are_encoded_as_scikit_learns_binarizer_encodes_them(codes, kind, every_class):
    """The targets a fit trains on are what scikit-learn's ``LabelBinarizer`` makes of the labels: for classes
    learnt from the labels themselves (one, two or more) or given beforehand (``partial_fit(..., classes=)``,
    possibly classes the labels do not hold)."""
    labels = LABEL_POOLS[kind][codes]
    binarizer = LabelBinarizer().fit(np.unique(LABEL_POOLS[kind]) if every_class else labels)
    model = MLPClassifier()
    model._label_binarizer, model.classes_ = binarizer, binarizer.classes_
    encoded = model._binarized(labels)
    np.testing.assert_array_equal(encoded, binarizer.transform(labels).astype(bool))
    assert encoded.dtype == bool


def test_pandas_frames_categoricals_and_feature_names(blobs):
    pd = pytest.importorskip("pandas")
    X, y = blobs
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    labels = pd.Series(pd.Categorical(np.array(["low", "mid", "high"])[y]))
    model = _quiet(MLPClassifier(max_iter=30, random_state=0), frame, labels)
    assert list(model.feature_names_in_) == list(frame.columns)
    assert list(model.classes_) == ["high", "low", "mid"]
    assert model.score(frame, labels) > 0.5
    np.testing.assert_array_equal(model.predict(frame), model.predict(X))


def test_binary_multilabel_and_multioutput_shapes(blobs):
    X, y = blobs
    binary = _quiet(MLPClassifier(max_iter=20, random_state=0), X, y == 1)
    assert binary.n_outputs_ == 1 and binary.out_activation_ == "logistic" and binary.coefs_[-1].shape == (100, 1)
    assert binary.predict_proba(X).shape == (200, 2) and binary.predict(X).dtype == bool
    Y = np.stack([y == 0, y == 1, y != 1], axis=1).astype(int)
    multilabel = _quiet(MLPClassifier(max_iter=20, random_state=0), X, Y)
    assert multilabel.n_outputs_ == 3 and multilabel.out_activation_ == "logistic"
    assert multilabel.predict(X).shape == (200, 3) and multilabel.predict_proba(X).shape == (200, 3)
    regressor = _quiet(MLPRegressor(max_iter=20, random_state=0), X, np.stack([y, 2.0 * y], axis=1))
    assert regressor.n_outputs_ == 2 and regressor.out_activation_ == "identity"
    assert regressor.predict(X).shape == (200, 2) and regressor.predict(X).dtype == np.float64


def test_read_only_memmap_input(blobs, tmp_path):
    X, y = blobs
    path = tmp_path / "X.npy"
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    model = _quiet(MLPClassifier(max_iter=10, random_state=0), mapped, y)
    np.testing.assert_array_equal(
        model.predict(mapped), _quiet(MLPClassifier(max_iter=10, random_state=0), X, y).predict(X)
    )


def test_sparse_input_is_refused_saying_so(blobs):
    sparse = pytest.importorskip("scipy.sparse")
    X, y = blobs
    with pytest.raises(TypeError, match=r"sparse input is not supported.*toarray"):
        MLPClassifier(max_iter=2).fit(sparse.csr_matrix(X), y)
    model = _quiet(MLPClassifier(max_iter=2), X, y)
    with pytest.raises(TypeError, match="sparse input is not supported"):
        model.predict(sparse.csr_matrix(X))


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [("activation", "gelu", ValueError), ("solver", "newton", ValueError), ("alpha", -1.0, ValueError),
     ("batch_size", 0, ValueError), ("learning_rate_init", 0.0, ValueError), ("momentum", 1.5, ValueError),
     ("validation_fraction", 1.0, ValueError), ("beta_2", 1.0, ValueError), ("epsilon", 0.0, ValueError),
     ("n_iter_no_change", 0, ValueError), ("max_iter", 2.5, TypeError), ("hidden_layer_sizes", (10, 0), ValueError),
     ("dtype", "float16", ValueError), ("backend", "cuda", ValueError), ("shuffle", "yes", TypeError)],
)  # fmt: skip
def test_bad_hyperparameters_are_refused_by_name(blobs, option, value, error):
    X, y = blobs
    with pytest.raises(error, match=option if option != "backend" else "cuda"):
        MLPClassifier(max_iter=2, **{option: value}).fit(X, y)


# ------------------------------------------------------------------------------------------ training behaviour
def test_partial_fit_needs_classes_first_and_lbfgs_has_none(blobs):
    X, y = blobs
    model = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        model.partial_fit(X, y)
    model.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    model.partial_fit(X[50:], y[50:])
    assert model.n_iter_ == 1 and model.t_ == 200 and len(model.loss_curve_) == 2
    with pytest.raises(ValueError, match="classes not in"):
        model.partial_fit(X, y + 5)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y.astype(float))


def test_warm_start_keeps_the_optimizer_state(blobs):
    """Two warm-started fits of 3 iterations are one fit of 6 (scikit-learn would restart Adam's moments)."""
    X, y = blobs
    options = {"max_iter": 3, "shuffle": False, "random_state": 0, "dtype": "float64", "tol": 0.0}
    warm = MLPClassifier(warm_start=True, **options)
    _quiet(warm, X, y)
    _quiet(warm, X, y)
    once = _quiet(MLPClassifier(**{**options, "max_iter": 6}), X, y)
    for mine, theirs in zip(warm.coefs_ + warm.intercepts_, once.coefs_ + once.intercepts_):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(warm.loss_curve_, once.loss_curve_)


def test_each_epoch_checks_the_optimizer_before_its_first_update(blobs):
    """The epoch loop checks the optimizer once, before its first step (its steps then skip the checks): a state
    buffer made read-only between two ``partial_fit`` calls is refused by name, and neither the network nor the
    optimizer's state or step count has changed."""
    X, y = blobs
    model = MLPClassifier(hidden_layer_sizes=(16,), random_state=0).partial_fit(X, y, classes=np.unique(y))
    optimizer = model._optimizer
    before = [array.copy() for array in model.coefs_ + model.intercepts_]
    moments, steps = optimizer.state[0]["exp_avg"].copy(), optimizer.step_count
    optimizer.state[1]["exp_avg_sq"].flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg_sq"):
        model.partial_fit(X, y)
    for array, kept in zip(model.coefs_ + model.intercepts_, before):
        np.testing.assert_array_equal(array, kept)
    np.testing.assert_array_equal(optimizer.state[0]["exp_avg"], moments)
    assert optimizer.step_count == steps


def test_convergence_warning_and_stopping_rule(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\)"):
        MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    stopped = MLPClassifier(max_iter=500, tol=1.0, n_iter_no_change=2, random_state=0).fit(X, y)
    assert stopped.n_iter_ == 4  # tol=1: only the first epoch improves (on inf); the count exceeds 2 at the 4th


@pytest.mark.parametrize("solver", ["adamw", "rmsprop", "adagrad", "nadam", "adamax", "radam", "lion"])
def test_fastopt_solvers_learn(digits, solver):
    X, y, X_test, y_test = digits
    rate = 1e-3 if solver == "lion" else 1e-2  # 45 steps: rates above the defaults (lion's steps are sign-sized)
    model = _quiet(MLPClassifier(solver=solver, learning_rate_init=rate, max_iter=15,
                                 random_state=0), X, y)  # fmt: skip
    assert model.score(X_test, y_test) > 0.7  # ten classes: chance is 0.1; these reach 0.79-0.92 here


# ------------------------------------------------------------------------------------------ agreement
def _pair(kind, **options):
    """fastopt's estimator (float64) and scikit-learn's, with the same parameters."""
    mine = {"classifier": MLPClassifier, "regressor": MLPRegressor}[kind]
    theirs = {"classifier": reference.MLPClassifier, "regressor": reference.MLPRegressor}[kind]
    return mine(dtype="float64", **options), theirs(**options)


def test_same_seed_gives_scikit_learns_initial_parameters(blobs):
    X, y = blobs
    for activation in ("relu", "logistic"):
        options = {"solver": "sgd", "learning_rate_init": 1e-300, "momentum": 0.0, "max_iter": 1, "random_state": 3,
                   "hidden_layer_sizes": (6, 4), "activation": activation}  # fmt: skip
        mine, theirs = (_quiet(estimator, X, y) for estimator in _pair("classifier", **options))
        for a, b in zip(mine.coefs_ + mine.intercepts_, theirs.coefs_ + theirs.intercepts_):
            np.testing.assert_array_equal(a, b)


def test_assigned_coefs_and_intercepts_are_the_networks_as_in_scikit_learn(blobs):
    """``clf.coefs_[i] = W`` and ``clf.intercepts_ = [...]`` set the network's weights as they do scikit-learn's
    (they were silently ignored: each access made a new list); a change of the lists' length is refused, and a
    refused assignment changes nothing."""
    X, y = blobs
    options = {"hidden_layer_sizes": (6,), "max_iter": 3, "random_state": 0}
    mine, theirs = (_quiet(estimator, X, y) for estimator in _pair("classifier", **options))
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=coef.shape) for coef in theirs.coefs_]
    biases = [rng.normal(size=intercept.shape) for intercept in theirs.intercepts_]
    for estimator in (mine, theirs):
        estimator.coefs_[0] = weights[0]
        estimator.coefs_[1] = weights[1]
        estimator.intercepts_ = biases
    np.testing.assert_allclose(mine.predict_proba(X), theirs.predict_proba(X), rtol=1e-7, atol=1e-9)
    before = [array.copy() for array in mine.coefs_]
    with pytest.raises(TypeError, match=r"one array per layer"):
        mine.coefs_.append(weights[0])
    with pytest.raises(ValueError, match=r"coefs_\[1\] must have shape"):
        mine.coefs_[1] = weights[0]
    with pytest.raises(ValueError, match="list of 2 arrays"):
        mine.coefs_ = weights[:1]
    with pytest.raises(ValueError, match="NaN"):
        mine.coefs_ = [weights[0], np.full_like(weights[1], np.nan)]
    assert all(array.tobytes() == saved.tobytes() for array, saved in zip(mine.coefs_, before))


@pytest.mark.parametrize("incremental", [False, True], ids=["warm_start", "partial_fit"])
def test_a_fit_continuing_after_a_change_of_activation_follows_scikit_learn(blobs, incremental):
    """warm_start and partial_fit after ``set_params(activation=...)`` train the same weights under the new
    activation, as scikit-learn's do (the old one was kept, silently); a stateless solver (plain sgd), whose
    continued fit scikit-learn does not reset, gives the same numbers."""
    X, y = blobs
    options = {"hidden_layer_sizes": (8,), "max_iter": 3, "random_state": 0, "solver": "sgd", "momentum": 0.0}
    pair = [_quiet(estimator, X, y) for estimator in _pair("classifier", **options)]
    for estimator in pair:
        estimator.set_params(activation="tanh", warm_start=True)
        if incremental:
            estimator.partial_fit(X, y)
        else:
            _quiet(estimator, X, y)
    mine, theirs = pair
    assert any(isinstance(layer, fastopt.layers.Tanh) for layer in mine._model.layers)
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=AGREEMENT_RTOL)
    np.testing.assert_allclose(mine.predict_proba(X), theirs.predict_proba(X), rtol=1e-7, atol=1e-9)


def test_a_fit_continuing_in_another_dtype_converts_the_network(blobs):
    """``set_params(dtype=...)`` before warm_start or partial_fit continues the same network in the new dtype (it
    stayed in the old one), its weights converted and the optimizer's state with them."""
    X, y = blobs
    mine = _quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0, dtype="float64"), X, y)
    weights = [array.astype(np.float32) for array in mine.coefs_]
    mine.set_params(dtype="float32").partial_fit(X, y)
    assert mine.coefs_[0].dtype == np.float32 and mine._optimizer.state[0]["exp_avg"].dtype == np.float32
    assert not np.array_equal(mine.coefs_[0], weights[0])
    assert np.isfinite(mine.predict_proba(X)).all()


@pytest.mark.parametrize("order", ["permuted", "reversed"])
def test_partial_fit_after_classes_are_reordered_by_hand_follows_scikit_learn(blobs, order):
    """``classes_`` reordered by hand: partial_fit encodes labels as the fit's binarizer does, as scikit-learn's
    does (it encoded them by their place in ``classes_``: trained on the wrong labels, or an IndexError)."""
    X, y = blobs
    options = {"hidden_layer_sizes": (8,), "max_iter": 3, "random_state": 0, "solver": "sgd", "momentum": 0.0}
    pair = [_quiet(estimator, X, y) for estimator in _pair("classifier", **options)]
    for estimator in pair:
        classes = estimator.classes_
        estimator.classes_ = classes[::-1] if order == "reversed" else np.roll(classes, 1)
        estimator.partial_fit(X, y)
    mine, theirs = pair
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=AGREEMENT_RTOL)
    np.testing.assert_array_equal(mine.predict(X), theirs.predict(X))


def test_sample_weights_are_checked_as_the_network_holds_them(blobs):
    """Weights positive in float64 but 0 in float32 (1e-46), or beyond float32's range, are refused for a float32
    network (they trained with every weight 0, loss_ 0); a column of weights (N, 1) is refused, as scikit-learn
    refuses it."""
    X, y = blobs
    with pytest.raises(ValueError, match="all zero in float32"):
        MLPClassifier(max_iter=2).fit(X, y, sample_weight=np.full(len(y), 1e-46))
    with pytest.raises(ValueError, match="finite and non-negative in float32"):
        MLPClassifier(max_iter=2).fit(X, y, sample_weight=np.full(len(y), 1e39))
    _quiet(MLPClassifier(max_iter=2, dtype="float64"), X, y, sample_weight=np.full(len(y), 1e-46))
    for estimator in (MLPClassifier(max_iter=2), reference.MLPClassifier(max_iter=2)):
        with pytest.raises(ValueError, match="Sample weights must be 1D array or scalar"):
            estimator.fit(X, y, sample_weight=np.ones((len(y), 1)))


AGREEMENT_CASES = {
    "adam": {"solver": "adam"},
    "adam-early-stopping": {"solver": "adam", "early_stopping": True},
    "sgd-nesterov-invscaling": {"solver": "sgd", "learning_rate": "invscaling", "learning_rate_init": 0.05},
    "sgd-momentum-adaptive": {"solver": "sgd", "learning_rate": "adaptive", "nesterovs_momentum": False,
                              "n_iter_no_change": 1, "tol": 0.05, "learning_rate_init": 0.05},
    "lbfgs": {"solver": "lbfgs", "max_iter": 30},
    "sgd-batch-32-no-shuffle": {"solver": "sgd", "batch_size": 32, "shuffle": False, "activation": "tanh"},
}  # fmt: skip


@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_classifier_agrees_with_scikit_learn_in_float64(blobs, case):
    X, y = blobs
    options = {"hidden_layer_sizes": (12,), "max_iter": 8, "random_state": 0, "alpha": 0.01, **AGREEMENT_CASES[case]}
    mine, theirs = (_quiet(estimator, X, y) for estimator in _pair("classifier", **options))
    assert mine.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(mine.loss_, theirs.loss_, rtol=AGREEMENT_RTOL)
    if options["solver"] != "lbfgs":
        np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=AGREEMENT_RTOL)
    if options.get("early_stopping"):
        np.testing.assert_allclose(mine.validation_scores_, theirs.validation_scores_, rtol=AGREEMENT_RTOL)
    np.testing.assert_allclose(mine.predict_proba(X), theirs.predict_proba(X), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("target", ["binary", "multilabel", "weighted"])
def test_classifier_targets_and_weights_agree_with_scikit_learn(blobs, target):
    X, y = blobs
    weights = None
    if target == "binary":
        y = y == 1
    elif target == "multilabel":
        y = np.stack([y == 0, y == 1, y != 1], axis=1).astype(int)
    else:
        weights = np.random.default_rng(0).uniform(0, 3, len(y))
    mine, theirs = _pair("classifier", hidden_layer_sizes=(12,), max_iter=6, random_state=1, alpha=0.1)
    _quiet(mine, X, y, sample_weight=weights)
    _quiet(theirs, X, y, sample_weight=weights)
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=AGREEMENT_RTOL)
    np.testing.assert_allclose(mine.predict_proba(X), theirs.predict_proba(X), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_regressor_agrees_with_scikit_learn_in_float64(loss, outputs):
    X, y = make_regression(150, 6, n_targets=outputs, random_state=0)
    y = y / np.abs(y).max() + (1.0 if loss == "poisson" else 0.0)
    for solver in ("adam", "lbfgs"):
        mine, theirs = _pair("regressor", loss=loss, solver=solver, hidden_layer_sizes=(10,), max_iter=6,
                             random_state=0, alpha=0.05)  # fmt: skip
        _quiet(mine, X, y)
        _quiet(theirs, X, y)
        np.testing.assert_allclose(mine.loss_, theirs.loss_, rtol=AGREEMENT_RTOL)
        np.testing.assert_allclose(mine.predict(X), theirs.predict(X), rtol=1e-7, atol=1e-9)


def test_float32_scores_as_scikit_learn_on_digits(digits):
    """The default float32 estimator reaches scikit-learn's test accuracy: same seed, 30 iterations of Adam."""
    X, y, X_test, y_test = digits
    mine = _quiet(MLPClassifier(max_iter=30, random_state=0), X, y)
    theirs = _quiet(reference.MLPClassifier(max_iter=30, random_state=0), X, y)
    assert mine.coefs_[0].dtype == np.float32
    assert abs(mine.score(X_test, y_test) - theirs.score(X_test, y_test)) <= 2 / len(y_test)
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=1e-4)


def test_diverging_fit_raises_at_once_and_verbose_reports(blobs, capsys):
    X, y = blobs
    diverging = MLPRegressor(solver="sgd", learning_rate_init=1e6, max_iter=50, random_state=0)
    with pytest.raises(ValueError, match=r"became .* at iteration [0-9]+: the input data may contain large values"):
        diverging.fit(X, y * 1e3)
    assert diverging.n_iter_ < 50
    _quiet(MLPClassifier(max_iter=2, random_state=0, verbose=True), X, y)
    assert capsys.readouterr().out.startswith("Iteration 1, loss = ")


def test_bench_workload_measures_both_libraries_on_the_same_seeds():
    from fastopt import bench_sklearn

    case = bench_sklearn.Case("breast_cancer, adam, 3 iterations", "breast_cancer", False, {"max_iter": 3})
    results = bench_sklearn.measure_case(case, seeds=2, settle_seconds=0.0)
    assert set(results) == {"scikit-learn", "scikit-learn 1 thread", "fastopt", "fastopt 1 thread"}
    assert all(len(m.scores) == 2 and len(m.seconds) == 2 and min(m.seconds) > 0 for m in results.values())
    np.testing.assert_allclose(results["fastopt"].scores, results["scikit-learn"].scores, atol=0.02)
    report = bench_sklearn.format_case(case, results)
    assert report.startswith("breast_cancer, adam, 3 iterations: accuracy") and "within 2 sd" in report
    assert "one thread: wall" in report
    # the fits' thread choices: none for scikit-learn's (no probe), one entry per fastopt fit
    assert all(len(m.threads) == 2 for m in results.values())
    assert results["scikit-learn"].threads == results["scikit-learn 1 thread"].threads == [None, None]
    assert "\n  fastopt's fits, by their thread probe: " in report
    assert bench_sklearn._choices_text([2, None, 1, 2]) == (
        "\n  fastopt's fits, by their thread probe: 1 on 1 thread, 2 on 2 threads, 1 without a choice (no probe)"
    )


def test_bench_records_the_threads_each_fastopt_fit_chose():
    """A fastopt fit long enough for its thread probe reports the threads the probe chose (the backend's last
    choice, changed by this fit); a scikit-learn fit reports none."""
    from fastopt import bench_sklearn

    policy = fastopt.backend.resolve_backend("cython").build_info() if "cython" in fastopt.available_backends() else {}
    if not policy.get("openmp") or policy.get("openmp_threads", 1) < 2:
        pytest.skip("no thread probe here: the compiled backend runs one thread (or is not built)")
    X, y = bench_sklearn.load_dataset("digits")
    data = bench_sklearn._split(X, y, 0)
    # 30 epochs of 7 steps: the probe's 2 ms warm-up and 20 timed steps fit in them on a machine of any speed
    ours = MLPClassifier(max_iter=30, tol=0.0, n_iter_no_change=30, random_state=0)
    *_, chosen = bench_sklearn._fit_and_score(ours, data, one_thread=False)
    assert chosen in (1, policy["openmp_threads"])
    theirs = reference.MLPClassifier(max_iter=2, random_state=0)
    assert bench_sklearn._fit_and_score(theirs, data, one_thread=False)[3] is None


def test_bench_reports_the_machine_state_around_each_case(monkeypatch, capsys):
    """Each case's report ends with the machine's state measured before it and after it: a GEMM's one-thread rate
    and its speed-up on every processor (fastopt.bench_floor.machine_state), the numbers that tell a slowed VM; and
    each setting's line gives the range of its fits' times (a disturbed fit stands out)."""
    from fastopt import bench_floor, bench_sklearn

    state = bench_floor.machine_state()
    if state is None:
        pytest.skip("no compiled GEMM probe here (the dense kernels use numpy.matmul): no machine state to report")
    assert state[0] > 0 and state[1] > 0
    case = bench_sklearn.Case("breast_cancer, adam, 2 iterations", "breast_cancer", False, {"max_iter": 2})
    monkeypatch.setattr(bench_sklearn, "CASES", [case])
    bench_sklearn.run(seeds=2)
    report = capsys.readouterr().out
    line = re.search(
        r"machine before the case: a float32 (\d+) x (\d+) x (\d+) GEMM at (\d+) GFLOP/s on one thread, ([\d.]+)x"
        r".*; after it (\d+) GFLOP/s, ([\d.]+)x",
        report,
    )
    assert line and tuple(int(size) for size in line.groups()[:3]) == bench_floor.STATE_PRODUCT[:3]
    assert int(line[4]) > 0 and float(line[5]) > 0 and int(line[6]) > 0 and float(line[7]) > 0
    assert report.index("breast_cancer, adam, 2 iterations:") < line.start()
    for setting in ("scikit-learn", "scikit-learn 1 thread", "fastopt", "fastopt 1 thread"):
        fits = re.search(rf"\n  {setting}: ([\d.]+) s \(CPU [\d.]+ s; fits ([\d.]+)-([\d.]+) s\)", report)
        assert fits and float(fits[2]) <= float(fits[1]) <= float(fits[3]), setting
    assert bench_sklearn._state_text(None) == ""
    assert bench_sklearn._state_text((100.0, 1.5)).endswith("1.50x that on " + str(os.cpu_count()) + " threads")


def test_lbfgs_holds_every_blas_at_one_thread_while_it_runs(monkeypatch):
    from threadpoolctl import threadpool_info

    import fastopt.sklearn as fastopt_sklearn

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    seen = []
    evaluate = fastopt_sklearn._BaseMLP._loss_and_gradients

    def recording(self, *args):
        seen.append(blas_threads())
        return evaluate(self, *args)

    monkeypatch.setattr(fastopt_sklearn._BaseMLP, "_loss_and_gradients", recording)
    before = blas_threads()
    X, y = make_classification(60, 5, random_state=0)
    _quiet(MLPClassifier(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=5, random_state=0), X, y)
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before
