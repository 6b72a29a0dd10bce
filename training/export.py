"""Export a training run's best checkpoint as the bundled model artifact (fp16 state_dict + config.json).

    python -m training.export --run ~/ich-runs/r1 --out monai_app/models/ich-resnet50 --version 0.1.0 [--tta-flip]

The operating threshold is chosen on the run's validation split (the same split the run recorded, by
patient where patients are known) for ``--target-sensitivity``; metrics with 95% bootstrap intervals are
stored in the config and the model card is regenerated from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from monai_app.pipeline.network import ModelConfig
from training.data import SliceDataset, split_by_group
from training.train import export_best, load_sources

logger = logging.getLogger("training.export")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training output dir holding best.pt and checkpoint.pt")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--version", required=True)
    p.add_argument("--target-sensitivity", type=float, default=None)
    p.add_argument(
        "--tta-flip",
        action="store_true",
        help="serve with flip test-time augmentation; the threshold is chosen with it",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run = Path(args.run).expanduser()
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    train_args = argparse.Namespace(**ckpt["args"])
    train_args.output_dir, train_args.export, train_args.version = str(run), args.out, args.version
    if args.target_sensitivity is not None:
        train_args.target_sensitivity = args.target_sensitivity
    samples = load_sources(train_args.data or ["png:../shared/data/rsna-ich-subset", "png:../shared/data/phe-sich-ct"])
    _, val = split_by_group(samples, train_args.val_fraction, train_args.split_seed)
    config = ModelConfig(
        version=args.version,
        input_size=train_args.input_size,
        training_data=", ".join(train_args.data),
        tta_flip=args.tta_flip,
    )
    stored = export_best(
        train_args, config, SliceDataset(val, train_args.input_size, config.in_channels), torch.device("cpu")
    )
    print(json.dumps(stored.metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
