"""Is a retrained model better than the one it would replace? A paired comparison on the same slices.

    python -m training.compare --data DIR --model NEW_MODEL_DIR [--baseline OLD_MODEL_DIR] [--bootstrap 2000]

Both models score every slice of ``DIR/labels.csv`` with the serving preprocessing (``training.evaluate``);
the AUC difference gets a 95% interval from a paired bootstrap (the same resampled patients, or slices when
no patient column exists, for both models), which is far tighter than comparing two unpaired intervals. The
baseline defaults to the bundled model. Exit code 0 when the comparison ran (whatever its outcome), 2 when it
could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_app.pipeline.slice_classifier import SliceClassifier, pick_device
from training import metrics
from training.evaluate import Bootstrap, EvaluationInputError, load_model, read_labels, score_samples


def paired_auc_difference(
    labels: np.ndarray, new: np.ndarray, old: np.ndarray, groups: Sequence[str], resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """AUC of ``new`` and ``old`` scores on the same slices, their difference with a paired 95% bootstrap
    interval, and the share of resamples in which ``new`` has the higher AUC."""
    labels = np.asarray(labels)
    both = np.stack([np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)], axis=1)
    boot = Bootstrap(groups, resamples, seed)

    def delta(y: np.ndarray, s: np.ndarray) -> float:
        return metrics.roc_auc(y, s[:, 0]) - metrics.roc_auc(y, s[:, 1])

    draws = [delta(labels[idx], both[idx]) for idx in boot.draws()] if resamples > 0 else []
    finite = np.array([d for d in draws if np.isfinite(d)])
    return {
        "n": len(labels),
        "auc_new": metrics.roc_auc(labels, both[:, 0]),
        "auc_old": metrics.roc_auc(labels, both[:, 1]),
        "auc_difference": delta(labels, both),
        "auc_difference_ci95": [float(v) for v in np.percentile(finite, [2.5, 97.5])] if len(finite) else None,
        "share_new_better": float((finite > 0).mean()) if len(finite) else None,
        "unit": boot.unit,
        "resamples": resamples,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with labels.csv (as training.evaluate)")
    p.add_argument("--model", required=True, help="the new model artifact folder")
    p.add_argument("--baseline", default=None, help="the model it would replace (default: the bundled model)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--out", default=None, help="write the JSON result here")
    args = p.parse_args(argv)
    data = Path(args.data).expanduser()
    device = pick_device("auto")
    try:
        samples, _ = read_labels(data)
        scored = []
        for path in (args.model, args.baseline):
            model, config = load_model(path, device)
            scored.append(score_samples(samples, SliceClassifier(model, config, precision=args.precision)))
    except EvaluationInputError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    new, old = scored
    if [o.key for o in new.outcomes] != [o.key for o in old.outcomes] or not new.outcomes:
        print("compare: error: the two models could not score the same slices", file=sys.stderr)
        return 2
    result = paired_auc_difference(new.labels, new.scores, old.scores, new.groups, args.bootstrap)
    result["data"], result["model"], result["baseline"] = str(data), args.model, args.baseline or "bundled"
    lo, hi = result["auc_difference_ci95"] or (float("nan"), float("nan"))
    print(
        f"{data}: {result['n']} slices; AUC new {result['auc_new']:.4f}, old {result['auc_old']:.4f}; "
        f"difference {result['auc_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] (paired bootstrap over "
        f"{result['unit']}s; new better in {100 * (result['share_new_better'] or 0):.1f}% of resamples)"
    )
    if args.out:
        Path(args.out).expanduser().write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
