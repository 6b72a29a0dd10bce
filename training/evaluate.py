"""Evaluate a model artifact on a labelled folder of slices, with exactly the serving preprocessing.

    python -m training.evaluate --data DIR [--model PATH] [--out FILE] [--plots DIR] [--scores FILE]

``DIR/labels.csv`` lists ``path`` (relative to DIR: PNG, JPG or a DICOM slice) and ``hemorrhage`` (1/0; ``any``
is accepted too), optionally ``patient_id``/``patient`` (confidence intervals then resample patients, since
slices of one patient are not independent), ``mask_path`` (lesion masks: the Grad-CAM pointing game) and the
RSNA subtype columns (``epidural``, ``intraparenchymal``, ``intraventricular``, ``subarachnoid``,
``subdural``; 1/0, empty for unknown). With subtype columns the report gains ``subtypes``: per subtype the AUC
of the model's own subtype output, and the share of that subtype's slices the ``any`` threshold flags (which
bleeds triage misses).

The pointing game is reported twice: ``pointing_game``, the share of positive slices whose Grad-CAM maximum
falls inside the mask, and ``pointing_game_tolerant``, the same within ``--pointing-tolerance`` pixels of the
mask on the picture's grid (15 by default, the tolerance of the pointing game's authors, Zhang et al. 2016).
The tolerant figure matters where masks are outlines: PHE-SICH masks mark the edema ring around a
hematoma, so a map that peaks on the hematoma itself misses the strict game.

Each slice goes through the same stages as serving: :func:`training.data.read_picture` (a picture of any
size or mode, or a DICOM slice windowed from HU, to the 8-bit brain window), :func:`fit_to_input` (head crop,
square, resize; the picture repeated over the model's channels as in training) and :class:`SliceClassifier`.
Scores are compared with the model's own operating threshold (``config.threshold``), never 0.5.

Calibration (are the scores the SC and SR show as probabilities the observed rates?): ``ece``, the expected
calibration error over ten equal-width score bins (the bins of the calibration plot), with
``ece_calibrated_p95``, the ECE a perfectly calibrated model stays under by chance on these scores (95% of
label draws from the scores themselves), and ``brier``, the mean squared error of the scores, with a bootstrap
interval. Both are tied to this data's prevalence.

Files that cannot be read are reported and skipped (counted in ``skipped``), never fatal. Exit codes: 0 done,
2 the model or the labels cannot be used, or no slice could be read.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from monai_app.picture_io import UnreadablePictureError
from monai_app.pipeline.gradcam import Explainer, check_target_layer
from monai_app.pipeline.network import ModelArtifactError, ModelConfig, default_model_dir, load_artifact
from monai_app.pipeline.preprocess import Box, fit_to_input, uncrop_map
from monai_app.pipeline.slice_classifier import SliceClassifier, pick_device
from training import metrics
from training.data import CLASSES, Sample, read_labelled_folder
from training.perturb import PERTURBATIONS, perturb

logger = logging.getLogger("training.evaluate")  # not __main__ under python -m

Statistic = Callable[[np.ndarray, np.ndarray], float]


class EvaluationInputError(ValueError):
    """The labels or the model cannot be used at all (as opposed to one unreadable file)."""


@dataclass(frozen=True)
class SliceOutcome:
    """One scored slice. ``pointing_distance`` (pixels from the Grad-CAM maximum to the mask, 0 inside, inf for
    a flat map) is None when the slice is not part of the pointing game. ``class_labels`` and
    ``class_scores`` follow the model's ``config.classes`` (labels NaN where unknown)."""

    key: str
    group: str
    label: int
    score: float
    pointing_distance: float | None = None
    class_labels: tuple[float, ...] = ()
    class_scores: tuple[float, ...] = ()

    @property
    def pointing_hit(self) -> bool | None:
        return None if self.pointing_distance is None else self.pointing_distance == 0.0


@dataclass
class Scored:
    """Everything the metrics need: the scored slices and what was skipped, with the reason."""

    outcomes: list[SliceOutcome] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mask_skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([o.label for o in self.outcomes], dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.array([o.score for o in self.outcomes], dtype=np.float64)

    @property
    def groups(self) -> list[str]:
        return [o.group for o in self.outcomes]


# ---------------------------------------------------------------- scoring
@dataclass
class _Loaded:
    sample: Sample
    gray: np.ndarray  # (Y, X) uint8 brain window
    x: torch.Tensor  # (C, S, S) float32 model input
    box: Box


def _load(sample: Sample, config: ModelConfig, perturbation: str | None = None) -> _Loaded:
    """The serving preprocessing of one slice (after ``perturbation``, a :mod:`training.perturb` name);
    raises UnreadablePictureError or ValueError for a bad file."""
    gray = sample.load()
    if perturbation:
        gray = perturb(gray, perturbation, sample.key)
    x, box = fit_to_input(np.repeat(gray[None], config.in_channels, axis=0), config.input_size, config.crop_to_head)
    return _Loaded(sample, gray, x, box)


def _mask_for(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The lesion mask as bool (Y, X) on the picture's grid (nearest-neighbour resized when the sizes differ)."""
    if sample.load_mask is None:
        raise ValueError("no mask")
    mask = np.asarray(sample.load_mask(), dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask is not 2D: shape {mask.shape}")
    if mask.shape != shape:
        logger.warning("%s: mask %s resized to the picture's %s", sample.key, mask.shape, shape)
        img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        mask = np.asarray(img) > 0
    return mask


def pointing_distance(cam: np.ndarray, mask: np.ndarray) -> float:
    """Euclidean distance in pixels from the map's maximum to the nearest pixel of ``mask``; 0 inside it.

    Both are (Y, X) on the picture's grid. A flat map (no maximum, e.g. all zero) points nowhere: inf. With
    ties at the maximum the first one in row-major order is taken. An empty mask cannot be pointed at: inf.
    """
    if cam.shape != mask.shape:
        raise ValueError(f"map {cam.shape} and mask {mask.shape} differ")
    if not np.isfinite(cam).all() or float(cam.max()) <= float(cam.min()) or not mask.any():
        return math.inf
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    if mask[y, x]:
        return 0.0
    ys, xs = np.nonzero(mask)
    return float(np.sqrt(((ys - y) ** 2 + (xs - x) ** 2).min()))


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> bool:
    """True when the map's maximum lies inside ``mask``, or within ``tolerance`` pixels of it."""
    return pointing_distance(cam, mask) <= tolerance


def score_samples(
    samples: Sequence[Sample],
    classifier: SliceClassifier,
    explainer: Explainer | None = None,
    batch_size: int = 16,
    perturbation: str | None = None,
) -> Scored:
    """Score every sample; Grad-CAM pointing game on positive samples with a mask when ``explainer`` is given.

    Args:
        samples: labelled slices (``load`` gives the 8-bit brain window; ``load_mask`` the lesion mask).
        classifier: the model's slice classifier; its config fixes the preprocessing.
        explainer: Grad-CAM for the pointing game, or None to skip it.
        batch_size: slices read and classified at a time (memory stays bounded on large folders).
        perturbation: re-make each slice as from another source first (:mod:`training.perturb`); masks no
            longer line up, so give no explainer with it.

    Returns:
        :class:`Scored` with one outcome per readable sample, in input order, and the skipped files.
    """
    config = classifier.config
    result = Scored()
    started, done = time.time(), 0
    for start in range(0, len(samples), batch_size):
        loaded: list[_Loaded] = []
        for sample in samples[start : start + batch_size]:
            try:
                loaded.append(_load(sample, config, perturbation))
            except (UnreadablePictureError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                logger.warning("skipped %s: %s", sample.key, reason)
                result.skipped.append((sample.key, reason))
        if not loaded:
            continue
        probs = classifier(torch.stack([item.x for item in loaded]))
        hits = _pointing_game(loaded, explainer, result) if explainer is not None else {}
        for i, (item, row) in enumerate(zip(loaded, probs, strict=True)):
            sample = item.sample
            result.outcomes.append(
                SliceOutcome(
                    sample.key,
                    sample.group,
                    sample.hemorrhage,
                    float(row[0]),
                    hits.get(i),
                    class_labels=_labels_for(sample, config.classes),
                    class_scores=tuple(float(v) for v in row),
                )
            )
        done += len(loaded)
        if (start // batch_size) % 20 == 19:
            logger.info("scored %d/%d slices (%.1f/s)", done, len(samples), done / max(1e-6, time.time() - started))
    return result


def _labels_for(sample: Sample, classes: Sequence[str]) -> tuple[float, ...]:
    """The sample's labels in the order of the model's classes; NaN for a class the data does not know."""
    position = {name: i for i, name in enumerate(CLASSES)}
    return tuple(float(sample.labels[position[c]]) if c in position else math.nan for c in classes)


def _pointing_game(loaded: list[_Loaded], explainer: Explainer, result: Scored) -> dict[int, float]:
    """Grad-CAM maximum's distance to the mask for each positive slice with a non-empty mask, keyed by
    position in ``loaded``."""
    masks: dict[int, np.ndarray] = {}
    for i, item in enumerate(loaded):
        if not item.sample.hemorrhage or item.sample.load_mask is None:
            continue
        try:
            mask = _mask_for(item.sample, item.gray.shape)
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            logger.warning("mask of %s skipped: %s", item.sample.key, reason)
            result.mask_skipped.append((item.sample.key, reason))
            continue
        if mask.any():  # an empty mask on a positive slice cannot be hit; leave it out rather than count a miss
            masks[i] = mask
    if not masks:
        return {}
    order = sorted(masks)
    maps = explainer(torch.stack([loaded[i].x for i in order]))
    distances = {}
    for i, cam in zip(order, maps, strict=True):
        full = uncrop_map(cam, loaded[i].box, loaded[i].gray.shape)
        distances[i] = pointing_distance(full, masks[i])
    return distances


# ---------------------------------------------------------------- statistics
class Bootstrap:
    """Percentile bootstrap that resamples groups (patients) when groups repeat, else single slices.

    Every statistic sees the same resamples (same seed), so intervals of different metrics are paired.
    """

    def __init__(self, groups: Sequence[str], resamples: int = 1000, seed: int = 0) -> None:
        self.resamples, self.seed = resamples, seed
        names, inverse = np.unique(np.asarray(list(groups), dtype=str), return_inverse=True)
        self.n = len(groups)
        self.by_group = len(names) < self.n
        order = np.argsort(inverse, kind="stable")
        self._members = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]) if self.n else []

    @property
    def unit(self) -> str:
        return "patient" if self.by_group else "slice"

    def draws(self) -> list[np.ndarray]:
        """The resampled index arrays (groups kept together); the same for every statistic of one seed."""
        rng = np.random.default_rng(self.seed)
        if not self.by_group:
            return [rng.integers(0, self.n, self.n) for _ in range(self.resamples)]
        g = len(self._members)
        return [np.concatenate([self._members[k] for k in rng.integers(0, g, g)]) for _ in range(self.resamples)]

    def ci95(self, labels: np.ndarray, values: np.ndarray, statistic: Statistic) -> list[float] | None:
        """[2.5th, 97.5th] percentile of ``statistic`` over resamples; None when it is never defined."""
        if self.n == 0 or self.resamples <= 0:
            return None
        labels, values = np.asarray(labels), np.asarray(values)
        stats = [statistic(labels[idx], values[idx]) for idx in self.draws()]
        finite = [v for v in stats if not math.isnan(v)]
        if not finite:
            return None
        lo, hi = np.percentile(finite, [2.5, 97.5])
        return [float(lo), float(hi)]


def _operating(name: str, threshold: float) -> Statistic:
    return lambda y, s: float(metrics.at_threshold(y, s, threshold)[name])


def subtype_report(
    scored: Scored, classes: Sequence[str], threshold: float, resamples: int, seed: int
) -> dict[str, Any]:
    """Per subtype (every class after ``any``) with known labels of both kinds: ``n``, ``n_positive``, the
    AUC of the model's subtype output with its 95% interval, and ``any_sensitivity``: the share of the
    subtype's positive slices whose ``any`` score reaches ``threshold`` (how often triage flags that bleed)."""
    report: dict[str, Any] = {}
    if not scored.outcomes or not scored.outcomes[0].class_scores:
        return report
    labels = np.array([o.class_labels for o in scored.outcomes], dtype=np.float64)
    scores = np.array([o.class_scores for o in scored.outcomes], dtype=np.float64)
    groups = np.asarray(scored.groups, dtype=object)
    for k, name in enumerate(classes):
        if k == 0:
            continue
        known = ~np.isnan(labels[:, k])
        y, s = labels[known, k].astype(np.int64), scores[known, k]
        if not (y.any() and (1 - y).any()):
            continue
        flagged = scores[known, 0][y == 1] >= threshold
        boot = Bootstrap(list(groups[known]), resamples, seed)
        report[name] = {
            "n": int(known.sum()),
            "n_positive": int(y.sum()),
            "auc": metrics.roc_auc(y, s),
            "auc_ci95": boot.ci95(y, s, metrics.roc_auc),
            "any_sensitivity": float(flagged.mean()),
        }
    return report


def summarize(
    scored: Scored,
    config: ModelConfig,
    resamples: int = 1000,
    seed: int = 0,
    pointing_game: bool | None = None,
    pointing_tolerance: float = 15.0,
) -> dict[str, Any]:
    """The report: slice-level AUC and operating-point metrics at ``config.threshold`` with 95% CIs.

    Args:
        scored: the output of :func:`score_samples`.
        config: the model's config (threshold and identity).
        resamples: bootstrap resamples (0: no intervals).
        seed: bootstrap seed.
        pointing_game: report the pointing game (None: when any slice took part in it). When asked for and
            no positive slice had a usable mask, its keys are present with None.
        pointing_tolerance: pixels (picture grid) for ``pointing_game_tolerant``.

    Returns:
        A JSON-ready dict; undefined values (e.g. AUC with one class only) are None.
    """
    labels, scores, threshold = scored.labels, scored.scores, float(config.threshold)
    boot = Bootstrap(scored.groups, resamples, seed)
    op = metrics.at_threshold(labels, scores, threshold)
    report: dict[str, Any] = {
        "n": len(labels),
        "n_positive": int(labels.sum()),
        "n_negative": int(len(labels) - labels.sum()),
        "threshold": threshold,
        "auc": metrics.roc_auc(labels, scores) if len(labels) else float("nan"),
        **{k: op[k] for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "tp", "fn", "tn", "fp")},
    }
    report["auc_ci95"] = boot.ci95(labels, scores, metrics.roc_auc)
    for name in ("accuracy", "sensitivity", "specificity"):
        report[f"{name}_ci95"] = boot.ci95(labels, scores, _operating(name, threshold))
    # are the scores shown as probabilities in the SC and SR the observed rates? (on this data's prevalence)
    report["ece"] = metrics.expected_calibration_error(labels, scores)
    report["ece_calibrated_p95"] = metrics.calibrated_ece_p95(scores, seed=seed) if resamples > 0 else None
    report["brier"] = metrics.brier_score(labels, scores)
    report["brier_ci95"] = boot.ci95(labels, scores, metrics.brier_score)
    played = [o for o in scored.outcomes if o.pointing_distance is not None]
    if pointing_game or (pointing_game is None and played):
        distance = np.array([o.pointing_distance for o in played], dtype=np.float64)
        pointing_boot = Bootstrap([o.group for o in played], resamples, seed)
        report["pointing_game_n"] = len(played)
        report["gradcam_layer"] = config.gradcam_layer
        report["pointing_tolerance_px"] = float(pointing_tolerance)
        for key, tolerance in (("pointing_game", 0.0), ("pointing_game_tolerant", pointing_tolerance)):
            hit = (distance <= tolerance).astype(np.float64)
            report[key] = float(hit.mean()) if len(hit) else None
            report[f"{key}_ci95"] = pointing_boot.ci95(hit, hit, lambda y, _: float(y.mean()))
        finite = distance[np.isfinite(distance)]
        report["pointing_distance_median_px"] = float(np.median(finite)) if len(finite) else None
    subtypes = subtype_report(scored, config.classes, threshold, resamples, seed)
    if subtypes:
        report["subtypes"] = subtypes
    report["confidence_intervals"] = {
        "method": "percentile bootstrap",
        "level": 0.95,
        "unit": boot.unit,
        "resamples": resamples,
        "seed": seed,
    }
    report["skipped"] = len(scored.skipped)
    report["skipped_files"] = [{"path": k, "reason": r} for k, r in scored.skipped]
    if scored.mask_skipped:
        report["masks_skipped"] = [{"path": k, "reason": r} for k, r in scored.mask_skipped]
    report["model"] = {"name": config.name, "version": config.version, "sha256": config.sha256}
    safe: dict[str, Any] = _json_safe(report)
    return safe


def _json_safe(value: Any) -> Any:
    """NaN/inf to None and numpy scalars to Python, recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------- plots
def write_plots(labels: np.ndarray, scores: np.ndarray, threshold: float, folder: Path, title: str = "") -> list[Path]:
    """ROC, precision-recall, calibration and per-class score histograms as PNG files in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    op = metrics.at_threshold(labels, scores, threshold)
    written = []

    def save(fig: Any, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    both = labels.any() and (~labels).any()
    fig, ax = plt.subplots(figsize=(5, 5))
    if both:
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"AUC {metrics.roc_auc(labels, scores):.3f}")
        ax.plot([1 - op["specificity"]], [op["sensitivity"]], "o", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC {title}".strip(), xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    if labels.any():
        recall, precision = metrics.precision_recall_curve(labels, scores)
        ax.plot(recall, precision, label="precision-recall")
        ax.axhline(labels.mean(), ls=":", color="grey", label=f"prevalence {labels.mean():.3f}")
        if not math.isnan(op["ppv"]):
            ax.plot([op["sensitivity"]], [op["ppv"]], "o", label=f"threshold {threshold:.3f}")
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title=f"Precision-recall {title}".strip(),
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left")
    save(fig, "precision_recall.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    mean_p, frac, count = metrics.calibration_bins(labels, scores)
    used = count > 0
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot(mean_p[used], frac[used], "o-", label=f"model (ECE {metrics.expected_calibration_error(labels, scores):.3f})")
    for p, f, c in zip(mean_p[used], frac[used], count[used], strict=True):
        ax.annotate(str(int(c)), (p, f), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed positive fraction",
        title=f"Calibration {title}".strip(),
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper left")
    save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41).tolist()
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"no hemorrhage (n={int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"hemorrhage (n={int(labels.sum())})")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(
        xlabel="slice probability",
        ylabel="slices",
        title=f"Scores by class {title}".strip(),
        yscale="log" if len(scores) > 200 else "linear",
    )
    ax.legend()
    save(fig, "score_histogram.png")
    return written


# ---------------------------------------------------------------- CLI
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate an ICH model artifact on a labelled folder of slices", add_help=add_help
    )
    p.add_argument(
        "--data", required=True, help="folder with labels.csv (path, hemorrhage|any[, patient_id][, mask_path])"
    )
    p.add_argument("--model", default=None, help="model artifact folder (default: the bundled model)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--plots", default=None, help="write ROC, precision-recall, calibration and histogram PNGs here")
    p.add_argument("--scores", default=None, help="write per-slice scores (CSV: path, label, score) here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="as serving: 'auto' is bf16 where native"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pointing-game", action="store_true", help="skip Grad-CAM even when masks are given")
    p.add_argument(
        "--gradcam-layer",
        default=None,
        help="play the pointing game with Grad-CAM on this layer instead of the model's (e.g. layer3): to choose it",
    )
    p.add_argument(
        "--perturb",
        choices=sorted(PERTURBATIONS),
        default=None,
        help="stress test: re-make every slice as if from another source (training.perturb); no pointing game",
    )
    p.add_argument(
        "--pointing-tolerance",
        type=float,
        default=15.0,
        help="pixels around the mask that count in pointing_game_tolerant",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def load_model(path: str | None, device: torch.device) -> tuple[torch.nn.Module, ModelConfig]:
    """Load the artifact; EvaluationInputError with one line when it is missing or unusable."""
    folder = Path(path).expanduser() if path is not None else default_model_dir()
    if not folder.exists():
        raise EvaluationInputError(f"model not found: {folder}")
    try:
        return load_artifact(folder, device)
    except ModelArtifactError as exc:
        raise EvaluationInputError(_one_line(exc)) from exc
    except (OSError, RuntimeError, ValueError) as exc:  # corrupt weights, wrong architecture for the config
        raise EvaluationInputError(f"cannot load model {folder}: {_one_line(exc)}") from exc


def read_labels(data: Path) -> tuple[list[Sample], bool]:
    """The samples of ``data/labels.csv`` and whether it has a ``mask_path`` column."""
    try:
        samples = read_labelled_folder(data)
    except (OSError, ValueError, KeyError) as exc:
        raise EvaluationInputError(f"cannot read labels of {data}: {_one_line(exc)}") from exc
    with open(data / "labels.csv", newline="") as fh:
        has_masks = "mask_path" in (csv.DictReader(fh).fieldnames or [])
    return samples, has_masks


def _fmt(value: float | None, ci: list[float] | None = None, digits: int = 3) -> str:
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return f"{text}  [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def format_summary(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [
        f"model     {m['name']} {m['version']} (sha256 {m['sha256'][:12] or 'not recorded'})",
        f"slices    {report['n']} ({report['n_positive']} hemorrhage, {report['n_negative']} none); skipped {report['skipped']}",
        f"AUC       {_fmt(report['auc'], report['auc_ci95'])}",
        f"threshold {report['threshold']:.4f} (the model's operating point)",
        f"sensitivity {_fmt(report['sensitivity'], report['sensitivity_ci95'])}  ({report['tp']} of {report['tp'] + report['fn']})",
        f"specificity {_fmt(report['specificity'], report['specificity_ci95'])}  ({report['tn']} of {report['tn'] + report['fp']})",
        f"accuracy  {_fmt(report['accuracy'], report['accuracy_ci95'])}",
        f"calibration ECE {_fmt(report['ece'])} (a calibrated model: up to {_fmt(report['ece_calibrated_p95'])} by chance)"
        f"  Brier {_fmt(report['brier'], report['brier_ci95'])}"
        f"  (prevalence {_fmt(report['n_positive'] / report['n'] if report['n'] else None)})",
    ]
    if "pointing_game" in report:
        lines.append(
            f"pointing game {_fmt(report['pointing_game'], report['pointing_game_ci95'])}  (Grad-CAM maximum inside the mask, {report['pointing_game_n']} positive slices)"
        )
        lines.append(
            f"pointing game within {report['pointing_tolerance_px']:g} px {_fmt(report['pointing_game_tolerant'], report['pointing_game_tolerant_ci95'])}"
            f"  (median distance {_fmt(report['pointing_distance_median_px'], digits=1)} px)"
        )
    for name, sub in report.get("subtypes", {}).items():
        lines.append(
            f"  {name:<17} AUC {_fmt(sub['auc'], sub['auc_ci95'])}  flagged by 'any' {_fmt(sub['any_sensitivity'])}"
            f"  ({sub['n_positive']} of {sub['n']} slices)"
        )
    lines.append(
        f"95% intervals: {report['confidence_intervals']['method']} over {report['confidence_intervals']['unit']}s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    data = Path(args.data).expanduser()
    try:
        samples, has_masks = read_labels(data)
        model, config = load_model(args.model, pick_device(args.device))
        if args.gradcam_layer:  # checked here too: without masks no Explainer is built to refuse a wrong name
            check_target_layer(model, args.gradcam_layer)
            config = replace(config, gradcam_layer=args.gradcam_layer)
        classifier = SliceClassifier(model, config, batch_size=args.batch_size, precision=args.precision)
        play = has_masks and not args.no_pointing_game and not args.perturb
        explainer = Explainer(model, config) if play else None
    except (EvaluationInputError, ValueError) as exc:  # ValueError: e.g. a Grad-CAM layer missing from the model
        print(f"evaluate: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    logger.info(
        "evaluating %d slices of %s with %s %s (%s, %s)",
        len(samples),
        data,
        config.name,
        config.version,
        classifier.device,
        classifier.precision,
    )

    scored = score_samples(samples, classifier, explainer, args.batch_size, args.perturb)
    if not scored.outcomes:
        print(f"evaluate: error: none of the {len(samples)} slices in {data} could be read", file=sys.stderr)
        return 2
    report = summarize(
        scored,
        config,
        args.bootstrap,
        args.seed,
        pointing_game=explainer is not None,
        pointing_tolerance=args.pointing_tolerance,
    )
    report["data"] = str(data)
    report["perturbation"] = args.perturb
    report["precision"] = classifier.precision
    print(format_summary(report))

    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        print(f"report    {out}")
    if args.scores:
        path = Path(args.scores).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            subtypes = list(config.classes[1:])
            writer.writerow(
                ["path", "label", "score", "pointing_hit", "pointing_distance_px", *(f"score_{c}" for c in subtypes)]
            )
            for o in scored.outcomes:
                played = o.pointing_distance is not None
                writer.writerow(
                    [
                        o.key,
                        o.label,
                        repr(o.score),
                        int(o.pointing_hit) if played else "",
                        repr(o.pointing_distance) if played else "",
                        *(repr(v) for v in o.class_scores[1:]),
                    ]
                )
        print(f"scores    {path}")
    if args.plots:
        paths = write_plots(
            scored.labels,
            scored.scores,
            config.threshold,
            Path(args.plots).expanduser(),
            f"({config.name} {config.version})",
        )
        print(f"plots     {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
