"""Robustness metrics: pure functions, numpy in and out. Errors are fractions in [0, 1]; the normalised
metrics (mCE, relative mCE, mFR, mT5D) and AUPR are returned in percent.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

_REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")

with open(os.path.join(_REF, "imagenet_c_alexnet_errors.json")) as _f:
    _ALEXNET_C = json.load(_f)

#: The 15 corruptions of the mCE and the 4 extra ones.
STANDARD_CORRUPTIONS = tuple(_ALEXNET_C["standard"])
EXTRA_CORRUPTIONS = tuple(_ALEXNET_C["extra"])
#: AlexNet's ImageNet-C top-1 errors per corruption, severities 1..5 (the mCE denominators).
ALEXNET_ERRORS: Dict[str, list] = dict(_ALEXNET_C["errors"])
#: AlexNet's clean ImageNet-val top-1 error: torchvision's AlexNet (top-1 56.522%), the network the
#: ImageNet-C AlexNet errors were measured with; the denominator offset of relative mCE.
ALEXNET_CLEAN_ERROR = 1 - 0.56522
#: ImageNet-P perturbations whose frames are compared with the first frame (not with the previous one).
NOISE_PERTURBATIONS = ("gaussian_noise", "shot_noise", "speckle_noise")


def _check(errors: Mapping[str, Sequence[float]], corruptions: Iterable[str], what: str):
    for c in corruptions:
        if c not in errors:
            raise KeyError(f"{what} has no errors for corruption {c!r}")
        if len(errors[c]) != 5:
            raise ValueError(f"{what}[{c!r}] needs 5 severities, got {len(errors[c])}")


def corruption_errors(errors: Mapping[str, Sequence[float]], baseline: Optional[Mapping] = None,
                      corruptions: Optional[Iterable[str]] = None) -> Dict[str, float]:
    """CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c}, in percent, per corruption."""
    baseline = ALEXNET_ERRORS if baseline is None else baseline
    corruptions = list(STANDARD_CORRUPTIONS if corruptions is None else corruptions)
    _check(errors, corruptions, "errors")
    _check(baseline, corruptions, "baseline")
    return {c: 100.0 * float(np.sum(errors[c]) / np.sum(baseline[c])) for c in corruptions}


def mce(errors: Mapping[str, Sequence[float]], baseline: Optional[Mapping] = None,
        corruptions: Optional[Iterable[str]] = None) -> float:
    """Mean corruption error (Hendrycks & Dietterich 2019), percent:

        mCE = 100 * mean_c [ sum_{s=1..5} E_{s,c} / sum_{s=1..5} E^AlexNet_{s,c} ]

    over the 15 standard corruptions unless `corruptions` is given. `errors`: {corruption: [top-1 error at
    severity 1..5]} as fractions. A model with exactly AlexNet's errors scores 100."""
    return float(np.mean(list(corruption_errors(errors, baseline, corruptions).values())))


def unnormalized_mean_error(errors: Mapping[str, Sequence[float]], corruptions: Optional[Iterable[str]] = None) -> float:
    """Plain mean top-1 error over corruptions and severities, percent (what some tools print as "mCE")."""
    corruptions = list(STANDARD_CORRUPTIONS if corruptions is None else corruptions)
    _check(errors, corruptions, "errors")
    return 100.0 * float(np.mean([np.mean(errors[c]) for c in corruptions]))


def relative_mce(errors: Mapping[str, Sequence[float]], clean_error: float, baseline: Optional[Mapping] = None,
                 baseline_clean_error: Optional[float] = None, corruptions: Optional[Iterable[str]] = None) -> float:
    """Relative mCE, percent:

        rel mCE = 100 * mean_c [ sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean) ]

    With a custom `baseline`, give its `baseline_clean_error` too."""
    if baseline is None:
        baseline = ALEXNET_ERRORS
        baseline_clean_error = ALEXNET_CLEAN_ERROR if baseline_clean_error is None else baseline_clean_error
    elif baseline_clean_error is None:
        raise ValueError("relative_mce with a custom baseline needs baseline_clean_error")
    corruptions = list(STANDARD_CORRUPTIONS if corruptions is None else corruptions)
    _check(errors, corruptions, "errors")
    _check(baseline, corruptions, "baseline")
    ratios = [np.sum(np.asarray(errors[c]) - clean_error) / np.sum(np.asarray(baseline[c]) - baseline_clean_error)
              for c in corruptions]
    return 100.0 * float(np.mean(ratios))


def _frame_pairs(n_frames: int, noise: bool, difficulty: int):
    """(reference frame, frame) index pairs: noise sequences compare every frame with the first; others
    compare consecutive frames within each of the `difficulty` interleaved sub-sequences."""
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    if noise:
        return [(0, t) for t in range(1, n_frames)]
    pairs = []
    for start in range(difficulty):
        idx = list(range(start, n_frames, difficulty))
        pairs += list(zip(idx[:-1], idx[1:]))
    return pairs


def flip_probability(predictions: Sequence[np.ndarray], noise: bool, difficulty: int = 1) -> float:
    """Flip probability of ImageNet-P (fraction, not percent): the mean over videos of the fraction of frame
    pairs whose top-1 predictions differ. `predictions`: one 1-D integer array of per-frame top-1 classes per
    video. A perfectly stable video scores 0."""
    per_video = []
    for preds in predictions:
        preds = np.asarray(preds)
        pairs = _frame_pairs(len(preds), noise, difficulty)
        if not pairs:
            raise ValueError("a video needs at least two frames (per sub-sequence)")
        per_video.append(np.mean([preds[a] != preds[b] for a, b in pairs]))
    return float(np.mean(per_video))


def _ranks(scores: np.ndarray) -> np.ndarray:
    """rank[c] = 1 + position of class c when sorted by decreasing score (ties broken by class index)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def top5_distance_pair(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """Top-5 distance between two frames: with sigma the ranks under frame b of frame a's classes taken in
    frame a's order, the sum over the top-5 positions i of |i - min(sigma_i - 1, 5)| (cumulative top-5
    membership compared position by position). Identical rankings score 0."""
    order_a = np.argsort(-scores_a, kind="stable")
    sigma = _ranks(scores_b)[order_a][:5]
    return float(np.sum(np.abs(np.arange(5) - np.minimum(sigma - 1, 5))))


def top5_distance(scores: Sequence[np.ndarray], noise: bool, difficulty: int = 1) -> float:
    """Mean top-5 distance of ImageNet-P over videos (frame pairing as in `flip_probability`). `scores`: one
    (frames x classes) array of logits per video."""
    per_video = []
    for video in scores:
        video = np.asarray(video)
        pairs = _frame_pairs(len(video), noise, difficulty)
        per_video.append(np.mean([top5_distance_pair(video[a], video[b]) for a, b in pairs]))
    return float(np.mean(per_video))


def normalized_mean(values: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """100 * mean_p value_p / baseline_p: mFR from flip probabilities, mT5D from top-5 distances."""
    missing = [p for p in values if p not in baseline]
    if missing:
        raise KeyError(f"baseline has no value for {missing}")
    return 100.0 * float(np.mean([values[p] / baseline[p] for p in values]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def imagenet_o_aupr(in_logits: np.ndarray, out_logits: np.ndarray) -> float:
    """ImageNet-O AUPR, percent: anomaly score = -max softmax over the 200 ImageNet-O classes (the logits
    given), ImageNet-O images are the positive class, ImageNet-val the negatives
    (sklearn's average_precision_score)."""
    from sklearn.metrics import average_precision_score

    in_logits, out_logits = np.asarray(in_logits, dtype=np.float64), np.asarray(out_logits, dtype=np.float64)
    scores = -np.concatenate([_softmax(in_logits).max(1), _softmax(out_logits).max(1)])
    labels = np.concatenate([np.zeros(len(in_logits)), np.ones(len(out_logits))])
    return 100.0 * float(average_precision_score(labels, scores))


def top1(logits_or_predictions: np.ndarray, labels: np.ndarray, class_subset: Optional[Sequence[int]] = None) -> float:
    """Top-1 accuracy (fraction). With `class_subset` (e.g. the 200 ImageNet-A classes) the argmax is taken
    over those logits only; labels are indices into the full class list."""
    x = np.asarray(logits_or_predictions)
    labels = np.asarray(labels)
    if x.ndim == 2:
        if class_subset is not None:
            subset = np.asarray(class_subset)
            x = subset[np.argmax(x[:, subset], axis=1)]
        else:
            x = np.argmax(x, axis=1)
    return float(np.mean(x == labels)) if len(labels) else float("nan")


def bg_gap(acc_mixed_same: float, acc_mixed_rand: float) -> float:
    """BG-Gap of ImageNet-9 (Xiao et al. 2021): accuracy on Mixed-Same minus accuracy on Mixed-Rand."""
    return float(acc_mixed_same - acc_mixed_rand)
