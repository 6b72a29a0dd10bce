"""Real peers on loopback: Orthanc (the PACS, with deploy/orthanc/route.lua), the service as a subprocess, dcmtk.

Every peer gets free ports, a temp directory, and ``TCP_NODELAY=1`` (dcmtk and Orthanc otherwise wait ~40 ms per
message). The service runs the real ``monai_app.runner.StudyRunner`` when it and the bundled model load; else
(``ICH_TEST_PROCESSOR=fake`` or no model yet) the :class:`FakeProcessor` below, and tests that need real outputs
(dciodvfy) skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ROUTE_LUA = REPO / "deploy" / "orthanc" / "route.lua"
ORTHANC_TEMPLATE = REPO / "deploy" / "orthanc" / "orthanc.json"
PLUGIN_AE = "ICH_TRIAGE"
ORTHANC_AE = "ORTHANC"
PLUGIN_MANUFACTURER = "ICH Triage Plugin (open source)"  # = dicom_io.result.PLUGIN_MANUFACTURER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


@cache
def dcmtk(name: str) -> str | None:
    """Path of a dcmtk tool. pynetdicom installs Python apps of the same names (storescu, echoscu, ...) that
    may come first on PATH: take the one whose ``--version`` says dcmtk."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            try:
                out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "dcmtk" in out.lower():
                return candidate
    return None


def require_dcmtk(name: str) -> str:
    path = dcmtk(name)
    if path is None:
        pytest.skip(f"dcmtk {name} not installed (apt-get install dcmtk)")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


# -- synthetic studies ---------------------------------------------------------------------------------------------


def write_study(
    folder: Path,
    *,
    n_slices: int = 16,
    size: int = 128,
    bleed: str | None = "intraparenchymal",
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    seed: int = 0,
    study_uid: str | None = None,
) -> tuple[str, list[Path]]:
    """Write a head-CT phantom series; returns (Study Instance UID, files)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from training.phantoms import PhantomSpec, make_phantom, write_dicom_series

    study_uid = study_uid or generate_uid()
    phantom = make_phantom(PhantomSpec(n_slices=n_slices, size=size, bleed=bleed, seed=seed))
    folder.mkdir(parents=True, exist_ok=True)
    files = write_dicom_series(phantom, folder, transfer_syntax=transfer_syntax, study_instance_uid=study_uid)
    assert dcmread(files[0], stop_before_pixels=True).StudyInstanceUID == study_uid
    return study_uid, files


# -- the fake processor (subprocess side) --------------------------------------------------------------------------


class FakeProcessor:
    """Stand-in for StudyRunner while no model is bundled: one SC per study, our Manufacturer, a NEGATIVE result."""

    def __init__(self, model_path: object = None, app_config: object = None) -> None:
        pass

    def run(self, input_dir: Path, output_dir: Path) -> Any:
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        from dicom_io.result import ModelIdentity, StudyResult, TriageDecision

        time.sleep(1.0)  # some processing time, so a test can catch the service mid-job
        src = pydicom.dcmread(sorted(input_dir.glob("*.dcm"))[0], stop_before_pixels=True)
        sc = Dataset()
        sc.file_meta = FileMetaDataset()
        sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sc.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for kw in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
            setattr(sc, kw, src.get(kw, ""))
        sc.SOPClassUID, sc.SOPInstanceUID = SecondaryCaptureImageStorage, sc.file_meta.MediaStorageSOPInstanceUID
        sc.StudyInstanceUID, sc.SeriesInstanceUID = src.StudyInstanceUID, generate_uid()
        sc.Manufacturer, sc.Modality, sc.ConversionType = PLUGIN_MANUFACTURER, "OT", "WSD"
        sc.SeriesNumber, sc.InstanceNumber = 901, 1
        sc.Rows = sc.Columns = 8
        sc.SamplesPerPixel, sc.PhotometricInterpretation = 1, "MONOCHROME2"
        sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 8, 7, 0
        sc.PixelData = bytes(64)
        sc.save_as(output_dir / "sc.dcm", enforce_file_format=True)
        result = StudyResult(str(src.StudyInstanceUID), TriageDecision.NEGATIVE, ModelIdentity("fake", "0"), 0.5, 0.1)
        (output_dir / "report.json").write_text(result.to_json())
        return result


@cache
def _real_runner_loads() -> tuple[bool, str]:
    if os.environ.get("ICH_TEST_PROCESSOR", "").lower() == "fake":
        return False, "ICH_TEST_PROCESSOR=fake"
    probe = subprocess.run(
        [sys.executable, "-c", "from monai_app.runner import StudyRunner; StudyRunner()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"StudyRunner does not load: {tail}"
    return True, "real StudyRunner"


@pytest.fixture(scope="session")
def real_runner() -> bool:
    """True when the service runs the real StudyRunner (with the bundled model)."""
    ok, why = _real_runner_loads()
    if not ok and os.environ.get("ICH_TEST_REQUIRE_RUNNER"):
        pytest.fail(f"the real StudyRunner is required here: {why}")
    return ok


@pytest.fixture(scope="session")
def processor_args(real_runner: bool) -> list[str]:
    return [] if real_runner else ["--processor", "conftest:FakeProcessor"]


# -- Orthanc ------------------------------------------------------------------------------------------------------


class Orthanc:
    """A real Orthanc with deploy/orthanc/orthanc.json + route.lua, adapted to loopback ports and a temp folder."""

    def __init__(self, workdir: Path, *, plugin_port: int, stable_age: int = 1) -> None:
        self.workdir = workdir
        self.dicom_port, self.http_port, self.plugin_port = free_port(), free_port(), plugin_port
        self.stable_age = stable_age
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "orthanc.log"
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(binary).exists():
            pytest.skip("Orthanc not installed (apt-get install orthanc)")
        self.binary = binary

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        config = json.loads(ORTHANC_TEMPLATE.read_text())
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config.update(
            {
                "Name": "ich-test-pacs",
                "DicomPort": self.dicom_port,
                "HttpPort": self.http_port,
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "StableAge": self.stable_age,
                "LuaScripts": [str(ROUTE_LUA)],
                "DicomModalities": {PLUGIN_AE: {"AET": PLUGIN_AE, "Host": "127.0.0.1", "Port": self.plugin_port}},
                "Plugins": [],
                "DicomScuTimeout": 10,
            }
        )
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=peer_env(), start_new_session=True
            )
        wait_for(lambda: self.alive() and http_get(self.url + "/system")[0] == 200, 60, what="Orthanc to start")

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited ({self.proc.returncode}); log:\n{self.log.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def get(self, path: str) -> Any:
        code, body = http_get(self.url + path, timeout=10)
        assert code == 200, f"GET {path}: {code} {body[:200]!r}"
        return json.loads(body)

    def download(self, path: str) -> bytes:
        code, body = http_get(self.url + path, timeout=30)
        assert code == 200, f"GET {path}: {code}"
        return body

    def post(self, path: str, body: Any) -> Any:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def study_id(self, study_uid: str) -> str | None:
        found = [r for r in self.post("/tools/lookup", study_uid) if r["Type"] == "Study"]
        return found[0]["ID"] if found else None

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        sid = self.study_id(study_uid)
        return [] if sid is None else self.get(f"/studies/{sid}/series")

    def result_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Instances of the plugin's result series in the study: [{"ID", "SOPInstanceUID", "SOPClassUID"}]."""
        out = []
        for s in self.series(study_uid):
            if s["MainDicomTags"].get("Manufacturer") != PLUGIN_MANUFACTURER:
                continue
            for iid in s["Instances"]:
                tags = self.get(f"/instances/{iid}/simplified-tags")
                out.append(
                    {
                        "ID": iid,
                        "SOPInstanceUID": tags["SOPInstanceUID"],
                        "SOPClassUID": tags["SOPClassUID"],
                        "SeriesInstanceUID": tags["SeriesInstanceUID"],
                    }
                )
        return out

    def storescu(self, files: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
        return run_storescu(files, "127.0.0.1", self.dicom_port, ORTHANC_AE, *extra)


def run_storescu(
    files: list[Path], host: str, port: int, called: str, *extra: str, calling: str = "STORESCU", check: bool = True
) -> subprocess.CompletedProcess[str]:
    storescu = require_dcmtk("storescu")
    proc = subprocess.run(
        [storescu, "-aet", calling, "-aec", called, *extra, host, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, f"storescu failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- the service --------------------------------------------------------------------------------------------------


class ServiceProcess:
    """``python -m monai_app.service`` as a subprocess (so it can be SIGKILLed), with its own spool and ports."""

    def __init__(
        self,
        workdir: Path,
        *,
        pacs: str,
        allow: str,
        processor_args: list[str],
        quiet_seconds: float = 1.0,
        extra_args: tuple[str, ...] = (),
        spool: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port, self.http_port = port or free_port(), free_port()
        self.spool = spool or workdir / "spool"
        self.log = workdir / "service.log"
        self.args = [
            sys.executable,
            "-m",
            "monai_app.service",
            "--ae-title",
            PLUGIN_AE,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--pacs",
            pacs,
            "--spool",
            str(self.spool),
            "--allow",
            allow,
            "--quiet-seconds",
            str(quiet_seconds),
            "--http-port",
            str(self.http_port),
            "--http-bind",
            "127.0.0.1",
            "--retry-base-seconds",
            "0.5",
            "--retry-cap-seconds",
            "2",
            "--keep",
            "results",
            *processor_args,
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: bool = True) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
        env.pop("ICH_CONFIG", None)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}); log:\n{self.log_text()[-4000:]}")
            return http_get(self.url + "/readyz")[0] == 200

        wait_for(ready, timeout, what="the service to be ready")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up at all."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def status(self, study_uid: str) -> dict[str, Any] | None:
        code, body = http_get(f"{self.url}/studies/{study_uid}")
        return json.loads(body) if code == 200 else None

    def metrics(self) -> str:
        return http_get(self.url + "/metrics")[1].decode()

    def echo(self, calling: str = ORTHANC_AE) -> bool:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=PLUGIN_AE)
        if not assoc.is_established:
            return False
        ok = assoc.send_c_echo().get("Status") == 0
        assoc.release()
        return bool(ok)


@dataclass
class Peers:
    orthanc: Orthanc
    service: ServiceProcess


@pytest.fixture
def make_service(tmp_path: Path, processor_args: list[str]) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def factory(*, pacs: str, allow: str = f"{ORTHANC_AE},STORESCU,ECHOSCU,MODALITY", **kwargs: Any) -> ServiceProcess:
        svc = ServiceProcess(tmp_path, pacs=pacs, allow=allow, processor_args=processor_args, **kwargs)
        started.append(svc)
        return svc

    yield factory
    for svc in started:
        if svc.running():
            svc.kill()


@pytest.fixture(scope="module")
def idle_service(tmp_path_factory: pytest.TempPathFactory, processor_args: list[str]) -> Iterator[ServiceProcess]:
    """One service per test module, with no PACS listening (results stay in the outbox, inputs in the spool)."""
    svc = ServiceProcess(
        tmp_path_factory.mktemp("idle-service"),
        pacs=f"NOBODY@127.0.0.1:{free_port()}",
        allow="STORESCU,ECHOSCU,MODALITY,BOUND@127.0.0.1,FARAWAY@192.0.2.7",
        processor_args=processor_args,
        quiet_seconds=0.5,
    )
    svc.start()
    yield svc
    if svc.running():
        svc.kill()


@pytest.fixture
def peers(tmp_path: Path, make_service: Callable[..., ServiceProcess]) -> Iterator[Peers]:
    """Orthanc routing to the service, the service sending back to Orthanc; both started."""
    service_port = free_port()
    orthanc = Orthanc(tmp_path, plugin_port=service_port)
    service = make_service(pacs=f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}", port=service_port)
    orthanc.start()
    service.start()
    yield Peers(orthanc, service)
    orthanc.stop()
