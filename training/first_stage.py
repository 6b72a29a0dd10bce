"""What should the first training stage learn from, without ImageNet weights? A measured answer on a proxy scale.

    python -m training.first_stage --data png:../shared/data/rsna-ich-subset --data png:../shared/data/phe-sich-ct \
        --out ~/ich-runs/first-stage --input-size 64 --stage1-steps 300 --stage2-steps 300 --amp

Three variants of the ResNet50 of ``build_model``, from the same random initialisation, each given the same
number of optimizer steps (stage 1 + stage 2), then scored on the real validation slices:

- ``none``: supervised on the real training split throughout (one optimizer, no first stage of its own kind);
- ``phantom``: stage 1 supervised on synthetic phantoms (``read_phantoms``), keeping ``fc`` (the same six
  outputs mean the same on phantoms), then stage 2 supervised on the real split with a fresh optimizer;
- ``ssl``: stage 1 self-supervised, SimCLR's NT-Xent on two views of each real training slice (labels
  ignored; the training ``Augmenter`` plus the serving preprocessing make the views) through the trunk and
  a 2048-512-128 projection head, then the untrained ``fc`` is put back and stage 2 is as above.

The real data is split as ``training.train`` splits it (by patient, so validation slices are never seen,
not even unlabelled), and stage 2 sees the same batches in the same order in every variant. Reported per
variant: validation AUC on real slices with a 95% bootstrap CI, AUC per source, images seen (an SSL step
costs two images per slice, so at equal steps it sees about twice the images) and wall time.

Limits: this is a proxy (small inputs, a few hundred steps, one seed) that ranks the choices under a fixed
budget; it does not predict the AUC of a full-size run, and differences inside the CIs are not rankings.
``OUT/results.json`` is written after each variant, so an interrupted study resumes with the unfinished ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai_app.machine import describe as describe_machine
from monai_app.pipeline.network import ModelConfig, build_model
from training import metrics
from training.augment import Augmenter
from training.data import Sample, SliceDataset, describe, read_phantoms, split_by_group
from training.train import ResumableSampler, autocast, load_sources, masked_bce, predict, real_mask

logger = logging.getLogger("training.first_stage")
CPU = torch.device("cpu")
STAGE1 = {"none": "supervised, real", "phantom": "supervised, phantoms", "ssl": "self-supervised (NT-Xent), real"}
LOG_EVERY = 25


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Measure what the first training stage should learn from")
    p.add_argument("--data", action="append", default=[], help="as training.train: png:DIR | rsna:DICOM_DIR:CSV | ...")
    p.add_argument("--out", default=str(Path.home() / "ich-runs" / "first-stage"))
    p.add_argument("--variants", default="none,phantom,ssl")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--stage2-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--phantoms", type=int, default=120, help="phantom studies for stage 1 (12 slices each)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--pos-weight", type=float, default=1.4)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner out of the other 2N - 2 views by cosine similarity."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, partner)


class TwoViews(torch.utils.data.Dataset):
    """Two independently augmented views of each slice of a ``SliceDataset``; the labels are dropped."""

    def __init__(self, base: SliceDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[index][0], self.base[index][0]


def batches(dataset: torch.utils.data.Dataset, batch_size: int, seed: int) -> Iterator[Sequence[torch.Tensor]]:
    """Endless batches in training's order: a seeded permutation per epoch (``ResumableSampler``)."""
    sampler = ResumableSampler(len(dataset), seed, 0, 1, batch_size)  # type: ignore[arg-type]
    drop_last = len(sampler) >= batch_size  # a last batch of one would break BatchNorm on 1x1 maps
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def train_steps(loss_fn: Callable, stream: Iterator, steps: int, tag: str, optimizer: torch.optim.Optimizer) -> tuple:
    """``steps`` optimizer steps of ``loss_fn(batch) -> (loss, images)``; returns (images seen, recent mean loss)."""
    seen, recent, start = 0, list[float](), time.time()
    for step, batch in zip(range(1, steps + 1), stream, strict=False):
        loss, images = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += images
        recent = [*recent[-(LOG_EVERY - 1) :], float(loss.detach())]
        if step % LOG_EVERY == 0 or step == steps:
            minutes = (time.time() - start) / 60
            rates = np.mean(recent), seen / minutes / 60, step / minutes
            logger.info("%s step %d/%d loss %.4f  %.1f img/s  %.1f steps/min", tag, step, steps, *rates)
    return seen, float(np.mean(recent)) if recent else float("nan")


def supervised(model: nn.Module, args: argparse.Namespace) -> Callable:
    def loss(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        with autocast(CPU, args.amp):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        return masked_bce(logits, y, args.pos_weight), len(x)

    return loss


def contrastive(trunk: nn.Module, head: nn.Module, args: argparse.Namespace) -> Callable:
    def loss(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        v1, v2 = batch
        with autocast(CPU, args.amp):
            z = head(trunk(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)))
        z1, z2 = z.float().chunk(2)
        return nt_xent(z1, z2, args.temperature), 2 * len(v1)

    return loss


def score(model: nn.Module, val_set: SliceDataset, amp: bool) -> dict:
    """Validation AUC over real slices with its 95% bootstrap CI, and AUC per source."""
    real = real_mask(val_set.samples)
    scores = predict(model, val_set, amp)[real]
    samples = [s for s, r in zip(val_set.samples, real, strict=True) if r]
    labels = np.array([s.hemorrhage for s in samples])
    ci = metrics.bootstrap_ci(labels, scores, metrics.roc_auc)
    result = {"val_auc": metrics.roc_auc(labels, scores), "val_auc_ci95": list(ci), "val_n": len(labels)}
    for source in sorted({s.source for s in samples}):
        sel = np.array([s.source == source for s in samples])
        result[f"val_auc_{source}"] = metrics.roc_auc(labels[sel], scores[sel])
    return result


def run_variant(variant: str, args: argparse.Namespace, train_samples: list[Sample], val_set: SliceDataset) -> dict:
    start = time.time()
    torch.manual_seed(args.seed)  # the same initial weights in every variant
    config = ModelConfig(input_size=args.input_size)
    model = build_model(config).to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]

    def slices(samples: list[Sample], seed: int) -> SliceDataset:
        return SliceDataset(samples, args.input_size, config.in_channels, Augmenter(seed=seed * 7919))

    def adamw(*modules: nn.Module) -> torch.optim.Optimizer:
        params = [p for m in modules for p in m.parameters()]
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    s1, s2, tag = args.seed + 1, args.seed, f"{variant}/stage1"
    logger.info("variant %s: stage 1 %s, %d + %d steps", variant, STAGE1[variant], args.stage1_steps, args.stage2_steps)
    if variant == "none":
        optimizer = adamw(model)  # one continuous supervised run: the optimizer carries into stage 2
        stream = batches(slices(train_samples, s1), args.batch_size, s1)
        seen1, loss1 = train_steps(supervised(model, args), stream, args.stage1_steps, tag, optimizer)
    elif variant == "phantom":
        phantoms = read_phantoms(args.phantoms, seed=args.seed)
        logger.info("phantoms: %s", describe(phantoms))
        stream = batches(slices(phantoms, s1), args.batch_size, s1)
        seen1, loss1 = train_steps(supervised(model, args), stream, args.stage1_steps, tag, adamw(model))
    else:  # ssl
        fc, model.fc = model.fc, nn.Identity()
        head = nn.Sequential(nn.Linear(fc.in_features, 512), nn.ReLU(inplace=True), nn.Linear(512, 128))
        stream = batches(TwoViews(slices(train_samples, s1)), args.batch_size, s1)
        seen1, loss1 = train_steps(contrastive(model, head, args), stream, args.stage1_steps, tag, adamw(model, head))
        model.fc = fc  # initialised with the trunk, never trained
    if variant != "none":
        optimizer = adamw(model)
    torch.manual_seed(args.seed + 1)  # the augmenter's noise uses torch's generator: same stage-2 batches everywhere
    stream = batches(slices(train_samples, s2), args.batch_size, s2)
    seen2, loss2 = train_steps(supervised(model, args), stream, args.stage2_steps, f"{variant}/stage2", optimizer)
    result = score(model, val_set, args.amp)
    result.update(stage1=STAGE1[variant], images_stage1=seen1, images_stage2=seen2, loss_stage1=loss1)
    result.update(loss_stage2=loss2, minutes=(time.time() - start) / 60)
    return result


def table(state: dict) -> str:
    rows = ["| variant | stage 1 | images seen | val AUC [95% CI] | per-source AUCs | minutes |", "|" + "---|" * 6]
    for name, r in state["variants"].items():
        lo, hi = r["val_auc_ci95"]
        sources = ", ".join(f"{k[8:]} {v:.3f}" for k, v in r.items() if k.startswith("val_auc_") and k[8:] != "ci95")
        seen = f"{r['images_stage1'] + r['images_stage2']:,} ({r['images_stage1']:,} + {r['images_stage2']:,})"
        auc = f"{r['val_auc']:.3f} [{lo:.3f}, {hi:.3f}]"
        rows.append(f"| {name} | {r['stage1']} | {seen} | {auc} | {sources} | {r['minutes']:.1f} |")
    val_n = next((r["val_n"] for r in state["variants"].values()), 0)
    footer = f"machine: {state['machine']}; validation: {val_n} real slices\nargs: {command_line(state['settings'])}"
    return "\n".join(rows) + "\n\n" + footer + "\n"


def command_line(settings: dict) -> str:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            flags += [f"{flag} {v}" for v in value]
        elif value is not False:
            flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = get_args_parser().parse_args(argv)
    variants = args.variants.split(",")
    if set(variants) - set(STAGE1):
        raise SystemExit(f"unknown variant in {args.variants!r} (choose from {', '.join(STAGE1)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "variants", "threads")}
    path = out / "results.json"
    fresh: dict[str, Any] = {"settings": settings, "machine": describe_machine(), "variants": {}}
    state = json.loads(path.read_text()) if path.is_file() else fresh
    if state["settings"] != settings:
        raise SystemExit(f"{path} was measured with other settings ({state['settings']}); use another --out")

    samples = load_sources(args.data or ["png:../shared/data/rsna-ich-subset", "png:../shared/data/phe-sich-ct"])
    train_samples, val_samples = split_by_group(samples, args.val_fraction, args.split_seed)
    logger.info("train: %s", describe(train_samples))
    logger.info("val:   %s", describe(val_samples))
    val_set = SliceDataset(val_samples, args.input_size)
    for variant in variants:
        if variant in state["variants"]:
            logger.info("skipping finished variant %s (in %s)", variant, path)
            continue
        state["variants"][variant] = run_variant(variant, args, train_samples, val_set)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)
        done = state["variants"][variant]
        logger.info("%s done: val AUC %.4f in %.1f min", variant, done["val_auc"], done["minutes"])
    report = table(state)
    (out / "results.md").write_text(report)
    print(report, flush=True)
    return state


if __name__ == "__main__":
    main()
