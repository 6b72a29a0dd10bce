"""Validate DICOM files with dicom3tools: ``dciodvfy`` (one instance against its IOD) and ``dcentvfy`` (a set).

``dciodvfy`` checks one file against the Information Object Definition of its SOP Class (PS3.3 Annex A: modules,
attribute types 1/1C/2/2C, enumerated values, VRs). ``dcentvfy`` checks a set of files for consistency of the
entities they share (PS3.3 Annex A.1.2 / PS3.4 C.6 information model: the same Patient, Study, Series and Frame of
Reference must carry the same attribute values in every instance, and identifiers must not be reused for different
parents). Our outputs must pass both with no errors, against the source CT they were derived from.

Both tools are Debian package ``dicom3tools``; this module only runs them and sorts their report lines::

    Error - Missing attribute Type 2 Required Element=<PatientSex> Module=<Patient>
    Warning - Attribute present in one instance but not the other - Element=<StudyDescription> IE=<Study> ...

Lines that start with ``Error`` or ``Abort`` are errors, lines that start with ``Warning`` are warnings, anything
else (the IOD name ``dciodvfy`` prints, blank lines) is informational.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicom_io.errors import DicomIoError

logger = logging.getLogger(__name__)

DCIODVFY = "dciodvfy"
DCENTVFY = "dcentvfy"
DEFAULT_TIMEOUT_S = 120.0


class ValidatorNotFoundError(DicomIoError, FileNotFoundError):
    """A dicom3tools validator is not on PATH (install the Debian package ``dicom3tools``)."""


class ValidatorFailedError(DicomIoError, RuntimeError):
    """A validator could not run to completion (timed out, or crashed without a report)."""


@dataclass(frozen=True)
class ValidationReport:
    """What one validator run said.

    Attributes:
        tool: The validator that ran (``dciodvfy`` or ``dcentvfy``).
        errors: ``Error``/``Abort`` lines, in the tool's order.
        warnings: ``Warning`` lines, in the tool's order.
        output: The tool's full output (stdout then stderr), for diagnostics.
        returncode: The tool's exit status (``dciodvfy`` exits 1 on errors; ``dcentvfy`` exits 0 even then, so
            callers must look at ``errors``, never at the exit status).
    """

    tool: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str
    returncode: int

    @property
    def ok(self) -> bool:
        """True when the tool reported no errors (warnings allowed)."""
        return not self.errors


def validators_available() -> bool:
    """Return True when both ``dciodvfy`` and ``dcentvfy`` are on PATH (for test skips)."""
    return shutil.which(DCIODVFY) is not None and shutil.which(DCENTVFY) is not None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ValidatorNotFoundError(
            f"{name} not found on PATH: install dicom3tools (Debian/Ubuntu: apt-get install dicom3tools)"
        )
    return path


def _existing_files(paths: Iterable[str | Path]) -> list[Path]:
    files = [Path(p).resolve() for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"not a file: {f}")
    return files


def parse_report(tool: str, output: str, returncode: int) -> ValidationReport:
    """Sort a dicom3tools report into errors and warnings.

    Args:
        tool: Name of the tool that produced ``output``.
        output: Its combined stdout and stderr text.
        returncode: Its exit status.

    Returns:
        The sorted report.
    """
    errors: list[str] = []
    warnings: list[str] = []
    for raw in output.splitlines():
        line = raw.strip()
        if line.startswith(("Error", "Abort")):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
    return ValidationReport(tool, tuple(errors), tuple(warnings), output, returncode)


def _run(tool: str, args: list[str], timeout_s: float) -> ValidationReport:
    exe = _tool(tool)
    try:
        proc = subprocess.run(
            [exe, *args], capture_output=True, text=True, errors="replace", timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ValidatorFailedError(f"{tool} timed out after {timeout_s:.0f} s") from exc
    report = parse_report(tool, proc.stdout + proc.stderr, proc.returncode)
    if proc.returncode != 0 and not report.errors:
        # dciodvfy exits 1 exactly when it reports errors; a non-zero exit without one is a crash.
        raise ValidatorFailedError(f"{tool} exited {proc.returncode} without a report: {report.output[-500:]!r}")
    logger.debug("%s: %d errors, %d warnings", tool, len(report.errors), len(report.warnings))
    return report


def dciodvfy_report(path: str | Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ValidationReport:
    """Validate one DICOM file against its IOD with ``dciodvfy``.

    Args:
        path: A DICOM file (PS3.10 format).
        timeout_s: Wall-clock limit for the tool.

    Returns:
        The full report (errors and warnings).

    Raises:
        ValidatorNotFoundError: ``dciodvfy`` is not installed.
        FileNotFoundError: ``path`` is not a file.
        ValidatorFailedError: the tool timed out or crashed.
    """
    (file,) = _existing_files([path])
    return _run(DCIODVFY, [str(file)], timeout_s)


def dcentvfy_report(paths: Iterable[str | Path], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ValidationReport:
    """Check a set of DICOM files for entity consistency with ``dcentvfy``.

    Args:
        paths: The files to compare (e.g. the source CT series plus our Secondary Capture and SR).
        timeout_s: Wall-clock limit for the tool.

    Returns:
        The full report (errors and warnings).

    Raises:
        ValidatorNotFoundError: ``dcentvfy`` is not installed.
        FileNotFoundError: a path is not a file.
        ValueError: ``paths`` is empty.
        ValidatorFailedError: the tool timed out or crashed.
    """
    files = _existing_files(paths)
    if not files:
        raise ValueError("dcentvfy needs at least one file")
    # Absolute paths: a file name starting with '-' must not read as an option.
    return _run(DCENTVFY, [str(f) for f in files], timeout_s)


def dciodvfy(path: str | Path) -> list[str]:
    """Return the error lines ``dciodvfy`` reports for one file (empty list: valid).

    Warnings are left out; use :func:`dciodvfy_report` to see them.

    Raises:
        ValidatorNotFoundError: ``dciodvfy`` is not installed.
    """
    return list(dciodvfy_report(path).errors)


def dcentvfy(paths: Iterable[str | Path]) -> list[str]:
    """Return the error lines ``dcentvfy`` reports for a set of files (empty list: consistent).

    Warnings are left out; use :func:`dcentvfy_report` to see them.

    Raises:
        ValidatorNotFoundError: ``dcentvfy`` is not installed.
    """
    return list(dcentvfy_report(paths).errors)
