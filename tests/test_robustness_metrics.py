"""Metrics against their definitions and hand-computed cases."""

import numpy as np
import pytest

from robustness import metrics as M


def test_alexnet_scores_mce_100():
    assert M.mce(M.ALEXNET_ERRORS) == pytest.approx(100.0)
    half = {c: [e / 2 for e in v] for c, v in M.ALEXNET_ERRORS.items()}
    assert M.mce(half) == pytest.approx(50.0)


def test_mce_by_hand_two_corruptions():
    baseline = {"a": [0.2] * 5, "b": [0.5] * 5}
    errors = {"a": [0.1, 0.1, 0.1, 0.1, 0.1], "b": [0.5, 0.5, 0.5, 0.5, 1.0]}
    # CE_a = 0.5/1.0 = 50%, CE_b = 3.0/2.5 = 120%  -> mean 85
    assert M.mce(errors, baseline, ["a", "b"]) == pytest.approx(85.0)
    assert M.unnormalized_mean_error(errors, ["a", "b"]) == pytest.approx(100 * (0.1 + 0.6) / 2)


def test_mce_names_missing_corruption():
    errors = dict(M.ALEXNET_ERRORS)
    del errors["fog"]
    with pytest.raises(KeyError, match="fog"):
        M.mce(errors)


def test_relative_mce():
    assert M.relative_mce(M.ALEXNET_ERRORS, M.ALEXNET_CLEAN_ERROR) == pytest.approx(100.0)
    baseline = {"a": [0.5] * 5}
    errors = {"a": [0.3] * 5}
    # (0.3-0.1)*5 / ((0.5-0.3)*5) = 1.0
    assert M.relative_mce(errors, 0.1, baseline, 0.3, ["a"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="baseline_clean_error"):
        M.relative_mce(errors, 0.1, baseline, None, ["a"])


def test_flip_probability():
    stable = [np.array([3, 3, 3, 3, 3])]
    assert M.flip_probability(stable, noise=False) == 0.0
    assert M.flip_probability(stable, noise=True) == 0.0
    alternating = [np.array([1, 2, 1, 2, 1])]
    assert M.flip_probability(alternating, noise=False) == 1.0  # every consecutive pair flips
    assert M.flip_probability(alternating, noise=True) == pytest.approx(2 / 4)  # vs the first frame
    # difficulty 2: sub-sequences [1,1,1] and [2,2] never flip
    assert M.flip_probability(alternating, noise=False, difficulty=2) == 0.0
    two_videos = [np.array([0, 0, 1]), np.array([5, 5, 5])]
    assert M.flip_probability(two_videos, noise=False) == pytest.approx((0.5 + 0.0) / 2)


def test_top5_distance():
    scores = np.arange(10, dtype=float)[::-1]  # class 0 best
    video = np.stack([scores, scores])
    assert M.top5_distance([video], noise=False) == 0.0
    swapped = scores.copy()
    swapped[[0, 5]] = swapped[[5, 0]]  # class 0 drops to rank 6, class 5 enters the top 5
    # frame-1 top-5 classes 0..4 have ranks 6,2,3,4,5 in frame 2: |0-5| + 0 + 0 + 0 + 0 = 5
    assert M.top5_distance_pair(scores, swapped) == 5.0
    within = scores.copy()
    within[[0, 1]] = within[[1, 0]]  # swap inside the top 5: ranks 2,1,3,4,5 -> |0-1| + |1-0| = 2
    assert M.top5_distance_pair(scores, within) == 2.0


def test_imagenet_o_aupr():
    rng = np.random.default_rng(0)
    confident = np.zeros((50, 200))
    confident[:, 0] = 10  # in-distribution: confident
    unsure = rng.normal(size=(40, 200)) * 0.01  # ImageNet-O: flat softmax
    assert M.imagenet_o_aupr(confident, unsure) == pytest.approx(100.0)
    # Identical distributions: AUPR ~ the positive rate.
    same = rng.normal(size=(2000, 200))
    assert M.imagenet_o_aupr(same[:1000], same[1000:]) == pytest.approx(50, abs=5)


def test_top1_with_subset_and_bg_gap():
    logits = np.array([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])
    assert M.top1(logits, np.array([1, 0])) == 1.0
    assert M.top1(logits, np.array([2, 2]), class_subset=[0, 2]) == 0.5  # argmax over classes 0 and 2
    assert M.bg_gap(0.9, 0.7) == pytest.approx(0.2)
