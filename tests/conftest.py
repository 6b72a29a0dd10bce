"""Shared fixtures: synthetic CT series on disk, the shared real data, DICOM validators.

``phantom_study`` writes a phantom series (``training.phantoms``) into a fresh folder under the test's
``tmp_path`` and returns what was written, so tests know the HU, positions and bleed mask of every file.
Small by default (8 slices of 64 x 64) to keep the suite fast.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) from an uninstalled checkout
    sys.path.insert(0, str(REPO_ROOT))

from training.phantoms import Phantom, PhantomSpec, make_phantom, write_dicom_series  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
"""The project's shared real data (absent in CI and for outside contributors: tests that need it skip)."""
CQ500_SERIES = SHARED_DATA / "cq500-dicom" / "CQ500-CT-0"

_SPEC_FIELDS = {f.name for f in dataclasses.fields(PhantomSpec)}
TEST_SPEC_DEFAULTS: dict[str, Any] = {"n_slices": 8, "size": 64}


@dataclass(frozen=True)
class WrittenSeries:
    """A phantom series on disk: the phantom (known HU, mask, positions), its files (slice order) and folder."""

    phantom: Phantom
    paths: list[Path]
    folder: Path

    @property
    def study_instance_uid(self) -> str:
        import pydicom

        return str(pydicom.dcmread(self.paths[0], stop_before_pixels=True).StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        import pydicom

        return str(pydicom.dcmread(self.paths[0], stop_before_pixels=True).SeriesInstanceUID)


PhantomStudyFactory = Callable[..., WrittenSeries]


@pytest.fixture
def phantom_study(tmp_path: Path) -> PhantomStudyFactory:
    """Factory: ``phantom_study(folder=None, **kwargs) -> WrittenSeries``.

    Keyword arguments named like :class:`PhantomSpec` fields build the phantom (defaults ``n_slices=8,
    size=64``); all others go to :func:`write_dicom_series` (``transfer_syntax``, ``study_instance_uid``,
    ``modality``, ``image_type``, ``contrast_agent``, ``manufacturer``, ...). ``folder`` defaults to a new
    ``tmp_path/series<N>``; pass the same ``study_instance_uid`` to put several series in one study, and the
    same parent folder (e.g. ``tmp_path / "in" / "a"``, ``tmp_path / "in" / "b"``) to scan them together.
    """
    counter = itertools.count(1)

    def make(folder: str | Path | None = None, **kwargs: Any) -> WrittenSeries:
        spec_kwargs = {**TEST_SPEC_DEFAULTS, **{k: v for k, v in kwargs.items() if k in _SPEC_FIELDS}}
        write_kwargs = {k: v for k, v in kwargs.items() if k not in _SPEC_FIELDS}
        target = Path(folder) if folder is not None else tmp_path / f"series{next(counter)}"
        phantom = make_phantom(PhantomSpec(**spec_kwargs))
        paths = write_dicom_series(phantom, target, **write_kwargs)
        return WrittenSeries(phantom=phantom, paths=paths, folder=target)

    return make


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (tiny models; the machine may be busy), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cq500_series_dir() -> Path:
    """The real CQ500-CT-0 series (238 slices, JPEG Lossless); skips when absent."""
    if not CQ500_SERIES.is_dir():
        pytest.skip(f"CQ500 series not present at {CQ500_SERIES}")
    return CQ500_SERIES


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """Path of dicom3tools' dciodvfy; skips the test when it is not installed."""
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.skip("dciodvfy (dicom3tools) not on PATH")
    return path
