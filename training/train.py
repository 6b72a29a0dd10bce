"""Train the ICH ResNet50, in the shape of torchvision's classification reference script.

    python -m training.train --data png:../shared/data/rsna-ich-subset --data png:../shared/data/phe-sich-ct \
        --output-dir ~/ich-runs/run1 --epochs 30 --amp --resume auto
    torchrun --nproc_per_node 2 -m training.train ...        # DDP (gloo on CPU, nccl on GPU)

Checkpoints (model, optimizer, scheduler, epoch, step, args) are written atomically by rank 0 every
``--checkpoint-steps`` steps and at each epoch end; ``--resume`` continues at the exact step. The best
epoch by validation AUC is exported as a model artifact with ``--export``; the operating threshold is
chosen on the validation split for ``--target-sensitivity``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from monai_app.pipeline.network import ModelConfig, build_model, save_artifact
from monai_app.pipeline.slice_classifier import SliceClassifier
from training import metrics
from training.augment import Augmenter
from training.data import (
    Sample,
    SliceDataset,
    describe,
    read_labelled_folder,
    read_nifti,
    read_phantoms,
    read_rsna,
    split_by_group,
)

logger = logging.getLogger("training.train")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the ICH ResNet50 classifier", add_help=add_help)
    p.add_argument(
        "--data",
        action="append",
        default=[],
        help="png:DIR | rsna:DICOM_DIR:CSV | nifti:VOLUME:MASK | phantom:N (repeatable)",
    )
    p.add_argument(
        "--output-dir",
        default=str(Path.home() / "ich-runs" / "default"),
        help="checkpoints and logs (outside the work tree)",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--schedule",
        choices=("plateau", "cosine"),
        default="plateau",
        help="plateau: ReduceLROnPlateau on validation AUC (x0.3, patience 2); cosine: per-step cosine decay "
        "from --lr to --min-lr over --epochs (no dependence on a noisy validation metric)",
    )
    p.add_argument("--min-lr", type=float, default=1e-6, help="the cosine schedule's final rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--pos-weight",
        type=float,
        default=1.4,
        help="loss weight of hemorrhage-positive slices (student recipe 1.3-1.5)",
    )
    p.add_argument(
        "--source-weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="draw the training slices of SOURCE (a data folder's name, or 'phantom') W times per epoch "
        "(0.5: a fresh half each epoch; default 1; repeatable)",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="mixup: blend each batch with a shuffled copy of itself at a weight ~ Beta(ALPHA, ALPHA), and its loss "
        "likewise (0: off; 0.2-0.4 usual)",
    )
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: default)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CPU with AVX-512/AMX, or CUDA)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--init",
        default="",
        help="start from these model weights, fresh optimizer (a second stage): a training checkpoint "
        "('model'), a bare state_dict, or a model artifact folder such as monai_app/models/ich-resnet50",
    )
    p.add_argument("--resume", default="", help="checkpoint path, or 'auto' for OUTPUT_DIR/checkpoint.pt when present")
    p.add_argument("--checkpoint-steps", type=int, default=50)
    p.add_argument(
        "--keep-epoch-weights",
        action="store_true",
        help="also keep each epoch's weights as OUTPUT_DIR/epochs/epoch_NNN.pt (for training.average)",
    )
    p.add_argument(
        "--max-steps", type=int, default=0, help="stop after this many optimizer steps in this run (0: no limit)"
    )
    p.add_argument("--test-only", action="store_true")
    p.add_argument("--export", default="", help="write the best model as an artifact folder here")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--target-sensitivity", type=float, default=0.90)
    p.add_argument(
        "--tta-flip",
        action="store_true",
        help="exported model averages each slice with its mirror image (threshold chosen so)",
    )
    p.add_argument("--device", default="auto")
    return p


# ---------------------------------------------------------------- data
def load_sources(specs: Sequence[str]) -> list[Sample]:
    samples: list[Sample] = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind == "png":
            samples += read_labelled_folder(rest)
        elif kind == "rsna":
            dicom_dir, _, csv_path = rest.rpartition(":")
            samples += read_rsna(dicom_dir, csv_path)
        elif kind == "nifti":
            volume, _, mask = rest.partition(":")
            samples += read_nifti(volume, mask_path=mask)
        elif kind == "phantom":
            samples += read_phantoms(int(rest))
        else:
            raise SystemExit(f"unknown data source {spec!r}")
    return samples


def source_weights(samples: Sequence[Sample], specs: Sequence[str]) -> list[float] | None:
    """Per-sample draw weights from ``SOURCE=W`` specs (None when there are none); a source the training
    slices do not have, or a weight that is not a positive number, is refused by name."""
    if not specs:
        return None
    sources = sorted({s.source for s in samples})
    wanted: dict[str, float] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        if name not in sources:
            raise SystemExit(
                f"--source-weight {spec!r}: no training slices from {name!r} (sources: {', '.join(sources)})"
            )
        try:
            wanted[name] = float(value)
        except ValueError:
            wanted[name] = float("nan")
        if not 0 < wanted[name] < math.inf:
            raise SystemExit(f"--source-weight {spec!r}: the weight must be a finite number > 0")
    return [wanted.get(s.source, 1.0) for s in samples]


def _copies(weight: float, count: int) -> tuple[int, int]:
    """For ``count`` items of ``weight``: (whole copies of each item, items drawn once more) per epoch."""
    return math.floor(weight), round((weight - math.floor(weight)) * count)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """A per-epoch permutation (seed, epoch), sharded over ranks, that can start at a given batch.

    ``weights`` (one per dataset item, > 0) sets how often an item is drawn per epoch: ``w`` = 2.0 twice,
    0.5 half of the items of that weight (a fresh seeded half each epoch). The epoch length is fixed, so
    resume and the schedules see the same number of batches every epoch.
    """

    def __init__(
        self, n: int, seed: int, rank: int, world: int, batch_size: int, weights: Sequence[float] | None = None
    ) -> None:
        self.seed, self.rank, self.world, self.batch_size = seed, rank, world, batch_size
        self.epoch, self.start_batch = 0, 0
        self.by_weight: dict[float, list[int]] = {}
        if weights is not None:
            if len(weights) != n or not all(0 < w < math.inf for w in weights):
                raise ValueError("one finite weight > 0 per item")
            for i, w in enumerate(weights):
                self.by_weight.setdefault(float(w), []).append(i)
        self.n = n
        if self.by_weight:
            self.n = 0
            for w, members in self.by_weight.items():
                whole, extra = _copies(w, len(members))
                self.n += whole * len(members) + extra
            if self.n == 0:
                raise ValueError("these weights draw no item in an epoch")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _drawn(self, g: torch.Generator) -> list[int]:
        """This epoch's items, with each weight's whole copies and its seeded share of one more."""
        drawn: list[int] = []
        for w, members in sorted(self.by_weight.items()):
            whole, extra = _copies(w, len(members))
            drawn += members * whole
            drawn += [members[k] for k in torch.randperm(len(members), generator=g)[:extra].tolist()]
        return drawn

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        if self.by_weight:
            drawn = self._drawn(g)
            perm = [drawn[k] for k in torch.randperm(self.n, generator=g).tolist()]
        else:
            perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = math.ceil(self.n / self.world)
        perm += perm[: per_rank * self.world - self.n]  # pad so every rank gets the same count
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world) - self.start_batch * self.batch_size)

    def batches_per_epoch(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)


# ---------------------------------------------------------------- loop
def seed_augmenter(worker_id: int) -> None:
    """Each DataLoader worker reseeds its copy of the augmenter (torch draws a new base seed every epoch)."""
    info = torch.utils.data.get_worker_info()
    if info is not None and info.dataset.augment is not None:
        info.dataset.augment.rng.seed(info.seed)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """BCE over known labels only (NaN = unknown); the 'any' column weighs positives by ``pos_weight``."""
    known = ~torch.isnan(labels)
    target = torch.nan_to_num(labels, nan=0.0)
    weight = known.float()
    weight[:, 0] = weight[:, 0] * torch.where(target[:, 0] > 0.5, pos_weight, 1.0)
    weight[:, 0] *= 2.0  # the triage output matters most
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="sum")
    return loss / known.sum().clamp(min=1)


def mixup_draw(alpha: float, n: int, seed: int, rank: int, global_step: int) -> tuple[float, np.ndarray]:
    """The blend weight and partner order of one batch, from (seed, rank, step) alone: a resumed run mixes its
    batches exactly as the uninterrupted run would have."""
    rng = np.random.default_rng([seed, rank, global_step])
    return float(rng.beta(alpha, alpha)), rng.permutation(n)


def mixup_bce(
    logits: torch.Tensor, labels: torch.Tensor, lam: float, partner: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    """Mixup's loss (Zhang et al., ICLR 2018) for logits of ``lam * x + (1 - lam) * x[partner]``: the same blend of
    the loss against either slice's labels, so unknown (NaN) labels and the positive weight of ``masked_bce`` hold
    for each side as they are."""
    return lam * masked_bce(logits, labels, pos_weight) + (1.0 - lam) * masked_bce(logits, labels[partner], pos_weight)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_epoch(model, optimizer, loader, device, epoch, args, state, on_step, step_scheduler=None) -> float:  # type: ignore[no-untyped-def]
    """One pass over ``loader``; ``step_scheduler`` (if given) steps after every optimizer step."""
    model.train()
    total, count = 0.0, 0
    start = time.time()
    n_batches = loader.sampler.batches_per_epoch()
    # a progress bar on a terminal (rank 0); log lines every 10 steps either way, for files and pipes
    bar = tqdm(
        total=n_batches,
        initial=state["batch"],
        desc=f"epoch {epoch}",
        unit="batch",
        disable=not sys.stderr.isatty() or int(os.environ.get("RANK", "0")) != 0,
        leave=False,
    )
    for x, y in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        alpha = getattr(args, "mixup", 0.0)
        if alpha > 0:
            lam, order = mixup_draw(alpha, len(x), args.seed, int(os.environ.get("RANK", "0")), state["global_step"])
            partner = torch.as_tensor(order, device=device)
            x = lam * x + (1.0 - lam) * x[partner]
        with autocast(device, args.amp):
            logits = model(x)
        if alpha > 0:
            loss = mixup_bce(logits, y, lam, partner, args.pos_weight)
        else:
            loss = masked_bce(logits, y, args.pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        state["step"] += 1
        state["batch"] += 1
        state["global_step"] += 1
        total += float(loss.detach()) * len(x)
        count += len(x)
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        if state["batch"] % 10 == 0 or state["batch"] == n_batches:
            rate = count / max(1e-6, time.time() - start)
            logger.info("epoch %d [%d/%d] loss %.4f  %.1f img/s", epoch, state["batch"], n_batches, total / count, rate)
        if on_step():
            break
    bar.close()
    return total / max(1, count)


def predict(  # type: ignore[no-untyped-def]
    model, dataset: SliceDataset, amp: bool, batch_size: int = 64, tta_flip: bool = False
) -> np.ndarray:
    """Probability of 'any' for every slice of ``dataset`` (no augmentation), computed by the serving
    ``SliceClassifier`` on the model's device (bf16 autocast when ``amp``; with ``tta_flip``, the mean with the
    mirrored slice)."""
    classifier = SliceClassifier(model, ModelConfig(tta_flip=tta_flip), batch_size, "bf16" if amp else "fp32")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = [classifier(x)[:, 0] for x, _ in loader]
    return np.concatenate(out) if out else np.zeros(0)


SYNTHETIC_SOURCES = {"phantom"}


def real_mask(samples: Sequence[Sample]) -> np.ndarray:
    """Validation metrics, model selection and the threshold use real slices only, never phantoms."""
    return np.array([s.source not in SYNTHETIC_SOURCES for s in samples], dtype=bool)


def evaluate(model, dataset: SliceDataset, amp: bool) -> dict[str, float]:  # type: ignore[no-untyped-def]
    scores = predict(model, dataset, amp)
    labels = np.array([s.hemorrhage for s in dataset.samples])
    real = real_mask(dataset.samples)
    result = {"val_auc": metrics.roc_auc(labels[real], scores[real]), "val_n": int(real.sum())}
    op = metrics.at_threshold(labels[real], scores[real], 0.5)
    result.update({f"val_{k}": op[k] for k in ("sensitivity", "specificity")})
    for source in sorted({s.source for s in dataset.samples}):
        sel = np.array([s.source == source for s in dataset.samples])
        result[f"val_auc_{source}"] = metrics.roc_auc(labels[sel], scores[sel])
    return result


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int):  # type: ignore[no-untyped-def]
    """ReduceLROnPlateau (stepped per epoch with the validation AUC) or a per-step cosine decay."""
    if args.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=2)
    total = max(1, args.epochs * steps_per_epoch)
    floor = min(1.0, args.min_lr / args.lr)

    def factor(step: int) -> float:
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def initial_weights(path: str) -> dict[str, torch.Tensor]:
    """The state_dict of ``--init``: a training checkpoint, a bare state_dict, or an artifact folder (fp16)."""
    source = Path(path).expanduser()
    if source.is_dir():
        source = source / "model.pt"
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    state = loaded["model"] if isinstance(loaded, dict) and "model" in loaded else loaded
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, payload: dict) -> None:  # type: ignore[type-arg]
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def export_best(
    args: argparse.Namespace, config: ModelConfig, val_set: SliceDataset, device: torch.device
) -> ModelConfig:
    """Load the best checkpoint, choose the threshold on validation, write the artifact."""
    best = torch.load(Path(args.output_dir) / "best.pt", map_location="cpu", weights_only=True)
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    model.load_state_dict(best["model"])
    real = real_mask(val_set.samples)
    scores = predict(model, val_set, args.amp, tta_flip=config.tta_flip)[real]
    labels = np.array([s.hemorrhage for s in val_set.samples])[real]
    threshold = metrics.threshold_for_sensitivity(labels, scores, args.target_sensitivity)
    op = metrics.at_threshold(labels, scores, threshold)
    summary = {
        "validation_slices": len(labels),
        "auc": metrics.roc_auc(labels, scores),
        "auc_ci95": metrics.bootstrap_ci(labels, scores, metrics.roc_auc),
        "threshold_rule": f"highest threshold with validation sensitivity >= {args.target_sensitivity}"
        + (" (scores with tta_flip)" if config.tta_flip else ""),
        **{k: op[k] for k in ("sensitivity", "specificity", "accuracy")},
        "epoch": best["epoch"],
    }
    config = replace(config, threshold=threshold, metrics=summary)
    stored = save_artifact(model.cpu(), config, Path(args.export))
    logger.info(
        "exported %s (threshold %.4f, val AUC %.4f) to %s", stored.version, threshold, summary["auc"], args.export
    )
    return stored


# ---------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, float]:
    mixup = getattr(args, "mixup", 0.0)
    if not (math.isfinite(mixup) and mixup >= 0):
        raise SystemExit(f"--mixup {mixup}: the Beta distribution's alpha must be a finite number > 0 (0: off)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    out_dir = Path(args.output_dir).expanduser()
    args.output_dir = str(out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    samples = load_sources(args.data or ["png:../shared/data/rsna-ich-subset", "png:../shared/data/phe-sich-ct"])
    train_samples, val_samples = split_by_group(samples, args.val_fraction, args.split_seed)
    if rank == 0:
        logger.info("train: %s", describe(train_samples))
        logger.info("val:   %s", describe(val_samples))
        (out_dir / "split.json").write_text(
            json.dumps(
                {"train": sorted({s.group for s in train_samples}), "val": sorted({s.group for s in val_samples})},
                indent=0,
            )
        )
    config = ModelConfig(
        version=args.version,
        input_size=args.input_size,
        tta_flip=getattr(args, "tta_flip", False),
        training_data=", ".join(args.data or ["rsna-ich-subset", "phe-sich-ct"]),
    )
    augment = None if args.no_augment else Augmenter(seed=args.seed * 7919 + rank)
    train_set = SliceDataset(train_samples, args.input_size, config.in_channels, augment)
    val_set = SliceDataset(val_samples, args.input_size, config.in_channels)

    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    weights = source_weights(train_samples, getattr(args, "source_weight", []))
    sampler = ResumableSampler(len(train_set), args.seed, rank, world, args.batch_size, weights)
    if weights is not None and rank == 0:
        logger.info("source weights %s: %d slices drawn per epoch", ", ".join(args.source_weight), sampler.n)
    scheduler = make_scheduler(optimizer, args, sampler.batches_per_epoch())
    step_scheduler = scheduler if args.schedule == "cosine" else None
    state = {"epoch": 0, "batch": 0, "step": 0, "global_step": 0, "best_auc": -1.0}

    resume = args.resume
    if resume == "auto":
        resume = str(out_dir / "checkpoint.pt") if (out_dir / "checkpoint.pt").is_file() else ""
    if args.init and not resume:
        model.load_state_dict(initial_weights(args.init))
        logger.info("initialised from %s", args.init)
    if resume:
        ckpt = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["state"])
        state["step"] = 0
        logger.info("resumed from %s at epoch %d batch %d", resume, state["epoch"], state["batch"])

    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    if args.test_only:
        result = evaluate(unwrap(model), val_set, args.amp)
        logger.info("test-only: %s", result)
        return result

    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=False,
        worker_init_fn=seed_augmenter,
    )

    stop = {"flag": False}

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("signal %d: checkpointing and stopping", signum)
        stop["flag"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def checkpoint(name: str = "checkpoint.pt") -> None:
        if rank == 0:
            save_checkpoint(
                out_dir / name,
                {
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": dict(state),
                    "args": vars(args),
                },
            )

    def on_step() -> bool:
        if state["step"] % args.checkpoint_steps == 0:
            checkpoint()
        return stop["flag"] or (args.max_steps > 0 and state["step"] >= args.max_steps)

    result: dict[str, float] = {}
    metrics_path = out_dir / "metrics.csv"
    while state["epoch"] < args.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch, state["batch"])
        train_loss = train_one_epoch(model, optimizer, loader, device, epoch, args, state, on_step, step_scheduler)
        if state["batch"] < sampler.batches_per_epoch():  # interrupted mid-epoch
            checkpoint()
            logger.info("stopped at epoch %d batch %d; resume with --resume auto", epoch, state["batch"])
            break
        result = evaluate(unwrap(model), val_set, args.amp) if rank == 0 else {}
        auc_t = torch.tensor([result.get("val_auc", 0.0)], dtype=torch.float64)
        if world > 1:
            dist.broadcast(auc_t, 0)  # every rank steps its scheduler with rank 0's validation AUC
        auc = float(auc_t)
        if step_scheduler is None:
            scheduler.step(auc if not math.isnan(auc) else 0.0)
        if rank == 0:
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "time": time.time(),
                **result,
            }
            new = not metrics_path.exists()
            with open(metrics_path, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            logger.info(
                "epoch %d done: %s",
                epoch,
                {k: float(f"{v:.4g}") if isinstance(v, float) and k != "time" else v for k, v in row.items()},
            )
            weights = {"model": unwrap(model).state_dict(), "epoch": epoch, "val": result}
            if args.keep_epoch_weights:
                save_checkpoint(out_dir / "epochs" / f"epoch_{epoch:03d}.pt", weights)
            if not math.isnan(auc) and auc > state["best_auc"]:
                state["best_auc"] = auc
                save_checkpoint(out_dir / "best.pt", weights)
        state["epoch"] += 1
        state["batch"] = 0
        checkpoint()
        if world > 1:
            dist.barrier()
        if stop["flag"] or (args.max_steps > 0 and state["step"] >= args.max_steps):
            break

    if args.export and rank == 0:
        if (out_dir / "best.pt").is_file():
            export_best(args, config, val_set, device)
        else:
            logger.warning("no best.pt (validation AUC undefined: one class only?): nothing exported")
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
