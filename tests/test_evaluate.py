from __future__ import annotations

import numpy as np
import pytest

from sentilora.metrics import compute_metrics


def test_binary_metrics_match_hand_counts():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = compute_metrics(y, probs, n_classes=2)
    # predictions 0,1,1,1,0: TP=2, FP=1, FN=1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    # ROC-AUC: positive scores .8,.7,.4 vs negative .1,.6 -> 5 of 6 pairs ordered right
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7, 0.4])))
    assert "per_class" not in m


def test_multiclass_reports_macro_and_per_class():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    m = compute_metrics(y, probs, n_classes=3, label_names=["neg", "neu", "pos"])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["neg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_class"]["pos"]["recall"] == pytest.approx(0.5) and m["per_class"]["neu"]["f1"] == 0.0
    assert m["f1"] == pytest.approx(np.mean([1.0, 0.0, 0.5]))
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_roc_auc_is_none_when_a_class_is_absent():
    m = compute_metrics(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), n_classes=2)
    assert m["roc_auc"] is None and m["accuracy"] == 0.5
