"""training.train on tiny synthetic data: a step learns, resume is exact, DDP ranks agree, export loads.

Input 64 x 64, batch 4, a few steps of the real MONAI ResNet50 on CPU with one thread: each step is about
a second, so the whole file runs in well under a minute on a busy two-core machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_slices import head_slice

from monai_app.pipeline.network import CLASSES, ModelConfig, build_model, load_artifact, save_artifact, sha256_of
from monai_app.pipeline.slice_classifier import SliceClassifier
from training import average, export, metrics, train
from training.data import SliceDataset, read_labelled_folder, split_by_group

REPO = Path(__file__).resolve().parents[2]
SIZE, BATCH, N_IMAGES, VAL_FRACTION = 64, 4, 16, 0.25


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """16 slices, half positive, one patient each; returns (folder, split seed, training-set size).

    The split seed is the first that puts both classes in validation and at least three batches in training
    (so a run can be interrupted mid-epoch), found with the same split training uses.
    """
    root = tmp_path_factory.mktemp("tiny") / "slices"
    root.mkdir()
    rows = []
    for i in range(N_IMAGES):
        Image.fromarray(head_slice(SIZE, i % 2 == 1, seed=i)).save(root / f"s{i:02d}.png")
        rows.append({"path": f"s{i:02d}.png", "hemorrhage": i % 2, "patient_id": f"P{i:02d}"})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    samples = read_labelled_folder(root)
    for seed in range(200):
        tr, va = split_by_group(samples, VAL_FRACTION, seed)
        if {s.hemorrhage for s in va} == {0, 1} and len(tr) >= 3 * BATCH + 1 and len(tr) % 2 == 0:
            return root, seed, len(tr)
    raise AssertionError("no usable split seed")


@pytest.fixture
def isolated_main() -> Iterator[None]:
    """train.main installs signal handlers and sets torch's thread count: put both back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    yield
    for s, h in handlers.items():
        signal.signal(s, h)
    torch.set_num_threads(threads)


def run_main(data: Path, split_seed: int, out: Path, *extra: str) -> dict[str, float]:
    argv = [
        "--data", f"png:{data}", "--output-dir", str(out), "--input-size", str(SIZE), "--batch-size", str(BATCH),
        "--val-fraction", str(VAL_FRACTION), "--split-seed", str(split_seed), "--no-augment", "--threads", "1", *extra,
    ]  # fmt: skip
    return train.main(train.get_args_parser().parse_args(argv))


def load_checkpoint(path: Path) -> dict:  # type: ignore[type-arg]
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- one step
def test_a_few_steps_lower_the_loss_on_the_batch(tiny_data: tuple[Path, int, int], isolated_main: None) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_size=SIZE)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    dataset = SliceDataset(read_labelled_folder(tiny_data[0])[:8], SIZE)
    x, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    args = argparse.Namespace(amp=False, pos_weight=1.4)

    def batch_loss() -> float:
        model.train()  # the same batch statistics the optimizer step saw
        with torch.no_grad():
            return float(train.masked_bce(model(x.contiguous(memory_format=torch.channels_last)), y, args.pos_weight))

    before = batch_loss()
    sampler = train.ResumableSampler(len(dataset), seed=0, rank=0, world=1, batch_size=8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler)
    state = {"epoch": 0, "batch": 0, "step": 0, "global_step": 0}
    for epoch in range(3):  # one batch per epoch: three optimizer steps on the same eight slices
        sampler.set_epoch(epoch)
        state["batch"] = 0
        epoch_loss = train.train_one_epoch(
            model, optimizer, loader, torch.device("cpu"), epoch, args, state, lambda: False
        )
        assert math.isfinite(epoch_loss)
    after = batch_loss()
    assert state["global_step"] == 3
    assert after < 0.5 * before, (before, after)


def test_masked_bce_ignores_unknown_labels_and_weighs_positives() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.5, -0.2], [-0.7, 0.1, 0.0, 1.0, -2.0, 0.4]])
    labels = torch.full((2, len(CLASSES)), float("nan"))
    labels[0, 0], labels[0, 3] = 1.0, 0.0
    labels[1, 0] = 0.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    # 'any' counts twice (x2), positives of 'any' weigh pos_weight; NaN entries are out of both sum and count
    expected = (
        2 * 1.4 * bce(logits[0, 0], torch.tensor(1.0))
        + bce(logits[0, 3], torch.tensor(0.0))
        + 2 * bce(logits[1, 0], torch.tensor(0.0))
    ) / 3
    assert float(train.masked_bce(logits, labels, 1.4)) == pytest.approx(float(expected), rel=1e-6)
    changed = logits.clone()
    changed[0, 1] = 50.0  # an unknown label's logit does not matter
    assert float(train.masked_bce(changed, labels, 1.4)) == pytest.approx(float(expected), rel=1e-6)


def test_mixup_loss_blends_both_label_sets_and_keeps_unknown_labels_unknown() -> None:
    logits = torch.tensor([[2.0, 1, -1, 0, 0, 0], [-1.0, 0, 0, 0, 0, 0], [0.5, 1, 1, -2, 0, 0], [-3.0, 0, 0, 0, 1, 0]])
    nan = float("nan")
    y = torch.tensor([[1.0, *[nan] * 5], [0.0] * 6, [1.0, 1, 0, 0, 0, 0], [0.0, *[nan] * 5]])
    partner = torch.tensor([2, 0, 3, 1])
    loss = train.mixup_bce(logits, y, 0.3, partner, pos_weight=1.4)

    # by hand: slice i's logits against its own labels (weight 0.3) and against its partner's (0.7); a NaN
    # label drops out of its own side only, the positive weight and the doubled 'any' column apply per side
    def side(labels: torch.Tensor) -> float:
        total, known = 0.0, 0
        for row, target in zip(logits.tolist(), labels.tolist(), strict=True):
            for k, (z, t) in enumerate(zip(row, target, strict=True)):
                if math.isnan(t):
                    continue
                w = (1.4 if t > 0.5 else 1.0) * 2.0 if k == 0 else 1.0
                total += w * (math.log1p(math.exp(-z)) if t > 0.5 else math.log1p(math.exp(z)))
                known += 1
        return total / known

    expected = 0.3 * side(y) + 0.7 * side(y[partner])
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(train.mixup_bce(logits, y, 1.0, partner, 1.4)) == pytest.approx(
        float(train.masked_bce(logits, y, 1.4))
    )


def test_mixup_draws_depend_on_the_step_alone() -> None:
    lam, perm = train.mixup_draw(0.4, 32, seed=0, rank=0, global_step=7)
    again, perm_again = train.mixup_draw(0.4, 32, seed=0, rank=0, global_step=7)
    assert lam == again and np.array_equal(perm, perm_again) and 0.0 <= lam <= 1.0
    assert sorted(perm) == list(range(32))
    others = [train.mixup_draw(0.4, 32, 0, rank, step) for rank, step in ((0, 8), (1, 7))]
    assert all(lam != other for other, _ in others)  # the next step and the other rank draw afresh
    # Beta(0.4, 0.4) puts most weight near 0 and 1: most batches stay close to one of their two slices
    lams = np.array([train.mixup_draw(0.4, 4, 0, 0, step)[0] for step in range(2000)])
    assert 0.45 < lams.mean() < 0.55 and np.mean((lams < 0.1) | (lams > 0.9)) > 0.4


@pytest.mark.parametrize("alpha", ["-0.2", "inf", "nan"])
def test_a_mixup_alpha_that_is_no_beta_parameter_is_refused(alpha: str) -> None:
    args = train.get_args_parser().parse_args(["--mixup", alpha])
    with pytest.raises(SystemExit, match="--mixup"):
        train.main(args)


def test_sampler_shards_and_resumes_at_the_batch() -> None:
    n, bs = 11, 2
    ranks = [train.ResumableSampler(n, seed=5, rank=r, world=2, batch_size=bs) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shards = [s.indices() for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 6  # padded to equal length
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert ranks[0].batches_per_epoch() == 3
    resumed = train.ResumableSampler(n, seed=5, rank=1, world=2, batch_size=bs)
    resumed.set_epoch(3, start_batch=2)
    assert list(resumed) == shards[1][2 * bs :] and len(resumed) == len(shards[1]) - 2 * bs
    other_epoch = train.ResumableSampler(n, seed=5, rank=1, world=2, batch_size=bs)
    other_epoch.set_epoch(4)
    assert other_epoch.indices() != shards[1]


def test_weighted_sampler_draws_each_source_its_share_every_epoch_and_resumes() -> None:
    weights = [1.0] * 4 + [2.0] * 3 + [0.5] * 6  # items 0-3 once, 4-6 twice, three of 7-12 per epoch
    sampler = train.ResumableSampler(len(weights), seed=3, rank=0, world=1, batch_size=4, weights=weights)
    assert sampler.n == 4 + 6 + 3 and sampler.batches_per_epoch() == 4
    halves = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        drawn = sampler.indices()
        counts = np.bincount(drawn, minlength=len(weights))
        assert len(drawn) == 13 and counts[:4].tolist() == [1] * 4 and counts[4:7].tolist() == [2] * 3
        assert sorted(counts[7:].tolist()) == [0, 0, 0, 1, 1, 1]
        halves.append(frozenset(np.flatnonzero(counts[7:])))
    assert len(set(halves)) > 1  # a fresh half each epoch, not the same three slices forever
    resumed = train.ResumableSampler(len(weights), seed=3, rank=0, world=1, batch_size=4, weights=weights)
    resumed.set_epoch(5, start_batch=2)
    assert list(resumed) == drawn[8:]
    ranks = [train.ResumableSampler(len(weights), 3, r, 2, 4, weights) for r in range(2)]
    for s in ranks:
        s.set_epoch(5)
    shards = [s.indices() for s in ranks]  # the same draw, split over two ranks and padded to 7 each
    assert len(shards[0]) == len(shards[1]) == 7 and sorted(shards[0] + shards[1]) == sorted(drawn + drawn[:1])
    with pytest.raises(ValueError):
        train.ResumableSampler(3, 0, 0, 1, 2, weights=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        train.ResumableSampler(3, 0, 0, 1, 2, weights=[1.0, float("inf"), 1.0])
    with pytest.raises(ValueError, match="no item"):
        train.ResumableSampler(3, 0, 0, 1, 2, weights=[0.1, 0.1, 0.1])


def test_source_weights_come_from_source_names_and_refuse_unknown_ones(tiny_data: tuple[Path, int, int]) -> None:
    samples = read_labelled_folder(tiny_data[0])
    source = samples[0].source
    assert train.source_weights(samples, []) is None
    assert train.source_weights(samples, [f"{source}=1.5"]) == [1.5] * len(samples)
    for bad in ("rsna-elsewhere=2", f"{source}=0", f"{source}=-1", f"{source}=many", f"{source}=inf", f"{source}=nan"):
        with pytest.raises(SystemExit, match="source-weight"):
            train.source_weights(samples, [bad])


def test_a_source_weight_changes_the_steps_of_an_epoch(
    tiny_data: tuple[Path, int, int], tmp_path: Path, isolated_main: None
) -> None:
    data, split_seed, n_train = tiny_data
    run_main(data, split_seed, tmp_path / "half", "--epochs", "1", "--source-weight", f"{data.name}=0.5")
    ckpt = load_checkpoint(tmp_path / "half" / "checkpoint.pt")
    assert ckpt["state"]["global_step"] == math.ceil(round(n_train / 2) / BATCH) < math.ceil(n_train / BATCH)
    assert ckpt["args"]["source_weight"] == [f"{data.name}=0.5"]  # a resume can see what the run drew


def test_cosine_schedule_decays_per_step_from_lr_to_min_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-3)
    args = argparse.Namespace(schedule="cosine", lr=1e-3, min_lr=1e-5, epochs=2)
    scheduler = train.make_scheduler(optimizer, args, steps_per_epoch=5)
    rates = []
    for _ in range(12):  # two steps past the end: the rate stays at the floor
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-3)
    assert rates[5] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # halfway through the 10 steps
    assert rates[10] == rates[11] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates[:10], rates[1:11], strict=True))  # strictly decreasing until the end
    plateau = train.make_scheduler(optimizer, argparse.Namespace(schedule="plateau", lr=1e-3), 5)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_init_reads_a_checkpoint_a_state_dict_or_an_artifact_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_size=SIZE))
    reference = model.state_dict()
    save_artifact(model, ModelConfig(input_size=SIZE), tmp_path / "artifact")  # stored fp16
    torch.save({"model": reference, "epoch": 3}, tmp_path / "checkpoint.pt")
    torch.save(reference, tmp_path / "bare.pt")
    from_artifact = train.initial_weights(str(tmp_path / "artifact"))
    for source in ("checkpoint.pt", "bare.pt"):
        loaded = train.initial_weights(str(tmp_path / source))
        for name, tensor in reference.items():
            assert torch.equal(loaded[name], tensor), (source, name)
    for name, tensor in reference.items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(from_artifact[name], expected), name
        assert from_artifact[name].dtype == tensor.dtype  # fp16 on disk, fp32 to train
    build_model(ModelConfig(input_size=SIZE)).load_state_dict(from_artifact)  # strict: every key matches


# ---------------------------------------------------------------- resume and export
@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "mixup"), [("plateau", "0"), ("cosine", "0"), ("cosine", "0.4")])
def test_resume_continues_at_the_exact_step_and_export_loads(
    tiny_data: tuple[Path, int, int], tmp_path: Path, isolated_main: None, schedule: str, mixup: str
) -> None:
    data, split_seed, n_train = tiny_data
    sched = ("--schedule", schedule, "--epochs", "1", "--mixup", mixup)
    batches = math.ceil(n_train / BATCH)
    out, reference, export = tmp_path / "run", tmp_path / "reference", tmp_path / "export"

    # interrupted after two optimizer steps, mid-epoch
    assert run_main(data, split_seed, out, *sched, "--max-steps", "2", "--checkpoint-steps", "1") == {}
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert (ckpt["state"]["epoch"], ckpt["state"]["batch"], ckpt["state"]["global_step"]) == (0, 2, 2)
    assert not (out / "metrics.csv").exists() and not (out / "best.pt").exists()

    # resumed: finishes the epoch from batch 2, validates, exports
    result = run_main(data, split_seed, out, *sched, "--resume", "auto", "--export", str(export))
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert (ckpt["state"]["epoch"], ckpt["state"]["batch"], ckpt["state"]["global_step"]) == (1, 0, batches)
    assert 0.0 <= result["val_auc"] <= 1.0
    with open(out / "metrics.csv") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["0"]

    # the same as never having been interrupted, to the bit
    run_main(data, split_seed, reference, *sched)
    uninterrupted = load_checkpoint(reference / "checkpoint.pt")
    if schedule == "cosine":  # the decayed rate continued from the step, not from the start
        assert ckpt["optimizer"]["param_groups"][0]["lr"] == uninterrupted["optimizer"]["param_groups"][0]["lr"] < 3e-4
    assert uninterrupted["state"]["global_step"] == batches
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(tensor, ckpt["model"][name]), name

    # the export: loads, its checksum is the file's, the weights are the best epoch's (stored fp16)
    model, config = load_artifact(export)
    digest = hashlib.sha256((export / "model.pt").read_bytes()).hexdigest()
    assert config.sha256 == digest == sha256_of(export / "model.pt")
    assert config.input_size == SIZE and 0.0 < config.threshold < 1.0 and config.version == "0.1.0"
    assert config.metrics["validation_slices"] == N_IMAGES - n_train and config.metrics["epoch"] == 0
    best = load_checkpoint(out / "best.pt")["model"]
    for name, tensor in model.state_dict().items():
        expected = best[name].half().float() if best[name].is_floating_point() else best[name]
        assert torch.equal(tensor, expected), name
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])


# ---------------------------------------------------------------- DDP
RANK_WRAPPER = textwrap.dedent(
    """
    # Runs training.train.main under torchrun and records, per rank, what it trained and saw.
    import hashlib, json, os, sys
    from pathlib import Path

    import training.train as T

    built, seen = [], []
    _build = T.build_model

    def build_model(config):
        built.append(_build(config))
        return built[-1]

    class RecordingSampler(T.ResumableSampler):
        def __iter__(self):
            seen.extend(self.indices()[self.start_batch * self.batch_size :])
            return super().__iter__()

    T.build_model, T.ResumableSampler = build_model, RecordingSampler
    args = T.get_args_parser().parse_args(sys.argv[2:])
    T.main(args)

    def digest(tensors):
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    model = built[0]  # the trained one (rank 0 builds another for export only)
    rank = int(os.environ["RANK"])
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({
        "params": digest(p for _, p in sorted(model.named_parameters())),
        "buffers": digest(b for _, b in sorted(model.named_buffers())),
        "param_names": sorted(n for n, _ in model.named_parameters()),
        "buffer_names": sorted(n for n, _ in model.named_buffers()),
        "seen": seen,
    }))
    """
)


def _digest(tensors: Iterator[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tiny_data: tuple[Path, int, int], tmp_path: Path) -> None:
    data, split_seed, n_train = tiny_data
    wrapper = tmp_path / "rank_wrapper.py"
    wrapper.write_text(RANK_WRAPPER)
    out, report = tmp_path / "ddp", tmp_path / "ranks"
    report.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "OMP_NUM_THREADS": "1",
    }
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(wrapper), str(report),
        "--data", f"png:{data}", "--output-dir", str(out), "--epochs", "1", "--input-size", str(SIZE), "--batch-size", "2",
        "--val-fraction", str(VAL_FRACTION), "--split-seed", str(split_seed), "--no-augment", "--threads", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]

    assert ranks[0]["params"] == ranks[1]["params"]  # gradients were all-reduced: one model, two processes
    ckpt = load_checkpoint(out / "checkpoint.pt")  # written by rank 0
    assert _digest(ckpt["model"][k] for k in ranks[0]["param_names"]) == ranks[0]["params"]
    assert _digest(ckpt["model"][k] for k in ranks[0]["buffer_names"]) == ranks[0]["buffers"]
    # each rank trained on its own half of the (padded) training set
    per_rank = math.ceil(n_train / 2)
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == per_rank
    assert set(ranks[0]["seen"]) | set(ranks[1]["seen"]) == set(range(n_train))
    assert ckpt["state"]["global_step"] == math.ceil(per_rank / 2) and ckpt["state"]["epoch"] == 1


# ---------------------------------------------------------------- export with flip TTA
def test_export_with_tta_flip_picks_its_threshold_on_the_served_scores(
    tiny_data: tuple[Path, int, int], tmp_path: Path, isolated_main: None
) -> None:
    data, split_seed, _ = tiny_data
    out = tmp_path / "run"
    run_main(data, split_seed, out, "--epochs", "1")
    assert export.main(["--run", str(out), "--out", str(tmp_path / "tta"), "--version", "0.2.0", "--tta-flip"]) == 0
    model, config = load_artifact(tmp_path / "tta")
    assert config.tta_flip and "tta_flip" in config.metrics["threshold_rule"]
    # the threshold must come from what serving computes: SliceClassifier with the config's TTA, on validation
    _, val = split_by_group(read_labelled_folder(data), VAL_FRACTION, split_seed)
    inputs = torch.stack([SliceDataset(val, SIZE)[i][0] for i in range(len(val))])
    served = SliceClassifier(model, config, precision="fp32")(inputs)[:, 0]
    labels = np.array([s.hemorrhage for s in val])
    assert config.threshold == pytest.approx(metrics.threshold_for_sensitivity(labels, served, 0.90), abs=2e-3)
    unflipped = SliceClassifier(model, replace(config, tta_flip=False), precision="fp32")(inputs)[:, 0]
    assert not np.allclose(served, unflipped)  # the flip changes the scores, so the check above means something


# ---------------------------------------------------------------- weight averaging
def test_average_state_dicts_means_floats_keeps_counters_refuses_mismatch() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    avg = average.average_state_dicts([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 3
    with pytest.raises(ValueError, match="different tensors"):
        average.average_state_dicts([a, {"w": a["w"]}])


def test_recompute_batch_norm_measures_the_plain_mean_and_variance() -> None:
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3, momentum=0.1)
    model = torch.nn.Sequential(conv, norm)
    norm.running_mean.fill_(5.0)  # stale statistics that must not survive
    x = torch.rand(8, 1, 10, 10)
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(4))]
    assert average.recompute_batch_norm(model, batches) == 8
    with torch.no_grad():
        feats = conv(x)
    per_batch = [feats[:4], feats[4:]]  # momentum None: the mean of the per-batch statistics
    mean = torch.stack([f.mean((0, 2, 3)) for f in per_batch]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in per_batch]).mean(0)
    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-5, atol=1e-6)
    assert norm.momentum == 0.1 and not model.training


def test_kept_epoch_weights_average_into_an_exportable_run(
    tiny_data: tuple[Path, int, int], tmp_path: Path, isolated_main: None
) -> None:
    data, split_seed, _ = tiny_data
    run = tmp_path / "run"
    run_main(data, split_seed, run, "--epochs", "2", "--keep-epoch-weights")
    kept = sorted((run / "epochs").glob("epoch_*.pt"))
    assert [p.name for p in kept] == ["epoch_000.pt", "epoch_001.pt"]
    states = [load_checkpoint(p)["model"] for p in kept]
    assert not torch.equal(states[0]["conv1.weight"], states[1]["conv1.weight"])

    avg_run = tmp_path / "avg"
    argv = ["--run", str(run), "--weights", *map(str, kept), "--out", str(avg_run), "--batch-size", "4"]
    assert average.main(argv) == 0
    best = load_checkpoint(avg_run / "best.pt")
    for name, tensor in best["model"].items():
        if "running" in name or "num_batches" in name:
            continue
        torch.testing.assert_close(tensor, (states[0][name] + states[1][name]) / 2, msg=name)
    assert not torch.equal(
        best["model"]["bn1.running_mean"], (states[0]["bn1.running_mean"] + states[1]["bn1.running_mean"]) / 2
    )
    assert 0.0 <= best["val"]["val_auc"] <= 1.0 and "epoch_000.pt" in best["epoch"]

    assert export.main(["--run", str(avg_run), "--out", str(tmp_path / "model"), "--version", "0.0.2"]) == 0
    model, config = load_artifact(tmp_path / "model")
    assert config.metrics["epoch"] == best["epoch"]
    for name, tensor in model.state_dict().items():
        expected = best["model"][name]
        assert torch.equal(tensor, expected.half().float() if expected.is_floating_point() else expected), name

    # a released artifact (fp16 model.pt in a folder) averages like a weight file: a new cycle with its parent
    argv = ["--run", str(run), "--weights", str(tmp_path / "model"), str(kept[0]), "--out", str(tmp_path / "avg2")]
    assert average.main([*argv, "--batch-size", "4"]) == 0
    mixed = load_checkpoint(tmp_path / "avg2" / "best.pt")["model"]["conv1.weight"]
    released = best["model"]["conv1.weight"].half().float()
    torch.testing.assert_close(mixed, (released + states[0]["conv1.weight"]) / 2)
