"""gpudl.metrics (top-k accuracy, confusion matrix, per-class precision /
recall / F1) against hand-computed values and sklearn; evaluate(metrics=...)
and predict_proba."""
import numpy as np
import pytest

import gpudl
from gpudl import metrics

Y = np.array([0, 0, 1, 1, 2, 2])
PRED = np.array([0, 1, 1, 1, 0, 2])
SCORES = np.array([[.9, .05, .05],    # true 0: top-1 0
                   [.2, .5, .3],      # true 0: ranks 1, 2, 0 -> top-2 misses
                   [.1, .8, .1],      # true 1: top-1
                   [.3, .4, .3],      # true 1: top-1
                   [.5, .1, .4],      # true 2: second
                   [.1, .2, .7]])     # true 2: top-1


def test_hand_computed_values():
    assert metrics.top_k_accuracy(Y, SCORES, k=1) == pytest.approx(4 / 6)
    assert metrics.top_k_accuracy(Y, SCORES, k=2) == pytest.approx(5 / 6)
    assert metrics.top_k_accuracy(Y, SCORES, k=3) == 1.0
    cm = metrics.confusion_matrix(Y, PRED)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    r = metrics.precision_recall_f1(Y, PRED)
    # class 0: TP 1, predicted 2, true 2; class 1: TP 2, predicted 3, true 2;
    # class 2: TP 1, predicted 1, true 2
    np.testing.assert_allclose(r["precision"], [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(r["recall"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(r["f1"], [1 / 2, 0.8, 2 / 3])
    np.testing.assert_array_equal(r["support"], [2, 2, 2])
    assert r["macro_f1"] == pytest.approx((1 / 2 + 0.8 + 2 / 3) / 3)
    # scores give the same as their argmax labels
    np.testing.assert_array_equal(metrics.confusion_matrix(Y, SCORES), cm)


def test_a_class_never_predicted_has_zero_precision_not_nan():
    r = metrics.precision_recall_f1([0, 1, 2], [0, 0, 0], num_classes=4)
    np.testing.assert_allclose(r["precision"], [1 / 3, 0, 0, 0])
    np.testing.assert_allclose(r["recall"], [1, 0, 0, 0])
    assert r["support"].tolist() == [1, 1, 1, 0]


def test_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    scores = rng.standard_normal((500, 7)) + 1.5 * np.eye(7)[y]
    pred = scores.argmax(1)
    for k in (1, 2, 3, 5):
        assert metrics.top_k_accuracy(y, scores, k) == pytest.approx(
            sk.top_k_accuracy_score(y, scores, k=k, labels=range(7)))
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred, 7),
                                  sk.confusion_matrix(y, pred, labels=range(7)))
    p, r, f, s = sk.precision_recall_fscore_support(y, pred, labels=range(7), zero_division=0)
    ours = metrics.precision_recall_f1(y, pred, 7)
    for a, b in ((ours["precision"], p), (ours["recall"], r), (ours["f1"], f),
                 (ours["support"], s)):
        np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.top_k_accuracy(Y, SCORES, k=0), "k must be"),
    (lambda: metrics.top_k_accuracy(Y, SCORES[:3]), "scores must be"),
    (lambda: metrics.top_k_accuracy([0, 5], SCORES[:2]), "outside"),
    (lambda: metrics.confusion_matrix([0, -1], [0, 0]), ">= 0"),
    (lambda: metrics.confusion_matrix([0, 1], [0]), "predictions"),
    (lambda: metrics.confusion_matrix([0, 3], [0, 0], num_classes=2), "outside"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _trained():
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = gpudl.Sequential([gpudl.layers.Dense(4, 16), gpudl.layers.ReLU(),
                              gpudl.layers.Dense(16, 3)])
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.2))
    trainer.fit(x, y, epochs=5, batch_size=10, seed=0, verbose=False)
    return trainer, x, y


def test_evaluate_with_metrics():
    trainer, x, y = _trained()
    res = trainer.evaluate(x, y, metrics=["top_k", "top_2", "confusion", "precision_recall_f1"])
    scores = trainer.predict(x)
    assert res["top_5_accuracy"] == 1.0   # 3 classes: always among the top 5
    assert res["top_2_accuracy"] == metrics.top_k_accuracy(y, scores, 2)
    cm = res["confusion_matrix"]
    assert cm.shape == (3, 3) and cm.sum() == 60
    assert np.trace(cm) / 60 == pytest.approx(res["accuracy"])
    np.testing.assert_allclose(res["recall"], np.diag(cm) / cm.sum(1))
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        trainer.evaluate(x, y, metrics=["auc"])


def test_predict_proba_is_the_softmax_of_the_logits():
    trainer, x, _ = _trained()
    logits = trainer.predict(x)
    p = trainer.predict_proba(x)
    e = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(trainer.model.predict_proba(x), p, rtol=1e-6)
    assert np.argmax(p, 1).tolist() == np.argmax(logits, 1).tolist()


def test_predict_proba_of_a_binary_classifier():
    gpudl.set_device("cpu")
    model = gpudl.Sequential([gpudl.layers.Dense(2, 1)])
    x = np.array([[1., 2.], [-3., 0.5]], np.float32)
    z = model.predict(x)
    np.testing.assert_allclose(model.predict_proba(x), 1 / (1 + np.exp(-z)), rtol=1e-6)
    t = gpudl.Trainer(model, gpudl.losses.BinaryCrossEntropy(from_logits=True),
                      gpudl.optim.SGD(0.1))
    np.testing.assert_allclose(t.predict_proba(x), 1 / (1 + np.exp(-z)), rtol=1e-6)
    # huge logits: no overflow warning, exact 0 and 1
    assert gpudl.model.sigmoid(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]
