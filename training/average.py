"""Average the weights of several epochs of one run (stochastic weight averaging, Izmailov et al. 2018).

    python -m training.average --run ~/ich-runs/r3 --weights ~/ich-runs/r3/epochs/epoch_00{2,3,4}.pt \\
        --out ~/ich-runs/r3-avg
    python -m training.export --run ~/ich-runs/r3-avg --out DIR --version X --tta-flip

Epochs late in a run, at a low learning rate, sit around one minimum; their mean often generalises better than any
one of them. Batch-norm statistics of averaged weights are not the average of the statistics, so they are measured
again: forward passes in training mode over the run's own training slices (no augmentation, no gradients). The
averaged model is then scored on the run's validation split like an epoch of training. A released model folder
(``monai_app/models/ich-resnet50``) counts as a weight file: a run fine-tuned from it (``--init``) can be averaged with
its parent.

``--out`` becomes a run folder that ``training.export``, ``training.validation_report`` and ``training.compare``
accept: ``best.pt`` (the averaged weights, their validation metrics, where they came from) and ``checkpoint.pt``
(the source run's arguments only: it cannot be resumed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_app.pipeline.network import ModelConfig, build_model
from training.data import SliceDataset, split_by_group
from training.train import autocast, evaluate, initial_weights, load_sources, save_checkpoint

logger = logging.getLogger("training.average")


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (in fp32); other tensors (counters) from the first."""
    if not states:
        raise ValueError("nothing to average")
    keys = set(states[0])
    for st in states[1:]:
        if set(st) != keys:
            raise ValueError("the weight files hold different tensors: not the same architecture")
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([st[key].float() for st in states]).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, inputs: torch.utils.data.DataLoader, amp: bool = False) -> int:
    """Reset every batch-norm layer's running statistics and measure them again as the plain mean over the
    batches of ``inputs`` (momentum None). Returns the number of images seen. The model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {}
    for m in norms:
        m.reset_running_stats()
        saved[m], m.momentum = m.momentum, None
    model.train()
    device = next(model.parameters()).device
    seen = 0
    for x, _ in inputs:
        with autocast(device, amp):
            model(x.to(device).contiguous(memory_format=torch.channels_last))
        seen += len(x)
    for m in norms:
        m.momentum = saved[m]
    model.eval()
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the training run the weights come from (its checkpoint.pt)")
    p.add_argument(
        "--weights",
        nargs="+",
        required=True,
        help="weight files (training --keep-epoch-weights, best.pt) or model artifact folders (a released model)",
    )
    p.add_argument("--out", required=True, help="a new run folder for the averaged model")
    p.add_argument("--bn-samples", type=int, default=4096, help="training slices for the batch-norm statistics")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    run, out = Path(args.run).expanduser(), Path(args.out).expanduser()
    run_args = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["args"]
    files = [Path(w).expanduser() for w in args.weights]
    state = average_state_dicts([initial_weights(str(f)) for f in files])
    config = ModelConfig(input_size=run_args["input_size"])
    model = build_model(config).to(memory_format=torch.channels_last)
    model.load_state_dict(state)

    samples = load_sources(run_args["data"])
    train, val = split_by_group(samples, run_args["val_fraction"], run_args["split_seed"])
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)[: args.bn_samples].tolist()
    subset = SliceDataset([train[i] for i in order], config.input_size, config.in_channels)
    seen = recompute_batch_norm(model, torch.utils.data.DataLoader(subset, batch_size=args.batch_size), run_args["amp"])
    logger.info("batch-norm statistics measured on %d training slices", seen)

    result = evaluate(model, SliceDataset(val, config.input_size, config.in_channels), run_args["amp"])
    logger.info("averaged %d weight files: validation %s", len(files), result)
    out.mkdir(parents=True, exist_ok=True)
    source = f"average of {', '.join(f.name for f in files)} (run {run})"
    save_checkpoint(out / "best.pt", {"model": model.state_dict(), "epoch": source, "val": result})
    save_checkpoint(out / "checkpoint.pt", {"args": run_args, "averaged_from": [str(f) for f in files]})
    print(json.dumps({"epoch": source, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
