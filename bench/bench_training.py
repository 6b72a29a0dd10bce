"""Training throughput of the ResNet50 on this machine: the choices `training.train` makes (bf16 autocast,
channels_last, 128 px input) next to the alternatives, measured in one run.

    python bench/bench_training.py [--steps 6] [--batch-size 32] [--sizes 96,128,160,192] [--data DIR]

Each row times full optimizer steps (forward, masked BCE, backward, AdamW) of the training loop's own code on
random inputs, after two warm-up steps, and reports images/s and the ratio to the fp32, contiguous, 128 px
baseline of the same run. The data row times the data path alone (PNG decode, augmentation, the serving
preprocessing) on a labelled folder (default: the RSNA subset in ../shared/data, when present), since
`--workers 0` runs it on the training process between steps. Stop other CPU work first (e.g. pause a
training job with `kill -STOP`): the numbers are only comparable within one quiet run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monai_app.machine import describe as machine  # noqa: E402
from monai_app.pipeline.network import ModelConfig, build_model  # noqa: E402
from monai_app.pipeline.slice_classifier import cpu_has_native_bf16  # noqa: E402
from training.train import autocast, masked_bce  # noqa: E402


def step_rate(size: int, bf16: bool, channels_last: bool, batch: int, steps: int) -> float:
    """Images per second over ``steps`` optimizer steps after two warm-up steps."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_size=size))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 6) > 0.8).float()
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, bf16):
            logits = model(x)
        loss = masked_bce(logits, y, 1.4)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def data_rate(folder: Path, size: int, n: int = 256) -> float:
    """Training samples per second of the data path alone (one process)."""
    from training.augment import Augmenter
    from training.data import SliceDataset, read_labelled_folder

    samples = read_labelled_folder(folder)[:n]
    dataset = SliceDataset(samples, size, 1, Augmenter(seed=0))
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sizes", default="96,128,160,192")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "rsna-ich-subset"))
    args = p.parse_args()

    print(f"machine: {machine()} | native bf16 (AVX-512 BF16 / AMX): {cpu_has_native_bf16()}")
    print(f"batch {args.batch_size}, {args.steps} timed steps per row\n")
    print("| input | precision | memory format | images/s | vs fp32 contiguous 128 px |")
    print("|---|---|---|---|---|")
    base = step_rate(128, False, False, args.batch_size, args.steps)
    rows = [(128, False, False, base)]
    for bf16, cl in ((False, True), (True, False), (True, True)):
        rows.append((128, bf16, cl, step_rate(128, bf16, cl, args.batch_size, args.steps)))
    for size in [int(s) for s in args.sizes.split(",") if s and int(s) != 128]:
        rows.append((size, True, True, step_rate(size, True, True, args.batch_size, args.steps)))
    for size, bf16, cl, rate in rows:
        fmt = "channels_last" if cl else "contiguous"
        print(f"| {size} | {'bf16 autocast' if bf16 else 'fp32'} | {fmt} | {rate:.1f} | {rate / base:.2f}x |")
    folder = Path(args.data)
    if (folder / "labels.csv").is_file():
        rate = data_rate(folder, 128)
        print(f"\ndata path (decode + augmentation + preprocessing, 128 px, one process): {rate:.0f} samples/s")
    else:
        print(f"\ndata path: skipped ({folder} has no labels.csv)")
    print(f"threads {torch.get_num_threads()}, pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
