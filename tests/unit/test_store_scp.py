"""Storage SCP and the service around it, with a real pynetdicom SCU and a stand-in PACS on loopback.

The study processor is a fake that writes one small Secondary Capture, so these tests need no model.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from dicom_io.result import PLUGIN_MANUFACTURER, ModelIdentity, StudyResult, TriageDecision
from dicom_io.spool import Spool
from dicom_io.store_scp import DimseStatus, ReceiveOutcome, StoreSCP
from monai_app.service import Service
from monai_app.service_config import AllowedPeer, PacsAddress, ServiceConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_ct(study_uid: str, series_uid: str, index: int, *, size: int = 32, manufacturer: str = "ACME") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Secret^Name"
    ds.PatientID = "SECRET-ID-42"
    ds.Modality = "CT"
    ds.Manufacturer = manufacturer
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 5.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.full((size, size), 1024 + 40, dtype=np.int16) + index).tobytes()
    return ds


def write_part10(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


class FakeProcessor:
    """Writes one tiny Secondary Capture into the study (our Manufacturer), like the real app's outputs."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[int] = []

    def __call__(self, input_dir: Path, output_dir: Path) -> StudyResult:
        files = sorted(input_dir.glob("*.dcm"))
        self.calls.append(len(files))
        time.sleep(self.delay)
        src = pydicom.dcmread(files[0], stop_before_pixels=True)
        sc = Dataset()
        sc.file_meta = FileMetaDataset()
        sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sc.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sc.SOPClassUID = SecondaryCaptureImageStorage
        sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID
        sc.StudyInstanceUID = src.StudyInstanceUID
        sc.SeriesInstanceUID = generate_uid()
        sc.Manufacturer = PLUGIN_MANUFACTURER
        sc.Modality = "OT"
        sc.ConversionType = "WSD"
        sc.Rows = sc.Columns = 8
        sc.SamplesPerPixel = 1
        sc.PhotometricInterpretation = "MONOCHROME2"
        sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 8, 7, 0
        sc.PixelData = bytes(64)
        sc.save_as(output_dir / "sc.dcm", enforce_file_format=True)
        result = StudyResult(
            study_instance_uid=str(src.StudyInstanceUID),
            decision=TriageDecision.NEGATIVE,
            model=ModelIdentity("fake", "0"),
            threshold=0.5,
            probability=0.1,
        )
        (output_dir / "report.json").write_text(result.to_json())
        return result


class StandInPacs:
    """A pynetdicom Storage SCP standing in for the PACS: keeps every dataset it is sent."""

    def __init__(self, ae_title: str = "PACS") -> None:
        self.received: list[Dataset] = []
        self.status = DimseStatus.SUCCESS
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(BasicTextSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae = ae
        self.port = free_port()
        self.server = None

    def _store(self, event: evt.Event) -> int:
        if self.status == DimseStatus.SUCCESS:
            self.received.append(event.dataset)
        return int(self.status)

    def start(self) -> None:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def send(port: int, datasets: list[Dataset], *, calling: str = "MODALITY", called: str = "ICH_TRIAGE") -> list[int]:
    ae = AE(ae_title=calling)
    for sop_class in {str(d.SOPClassUID) for d in datasets} | {str(Verification)}:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association failed"
    statuses = [int(assoc.send_c_store(d).Status) for d in datasets]
    assoc.release()
    return statuses


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- the SCP alone -------------------------------------------------------------------------------------------------


@pytest.fixture
def scp(tmp_path: Path):  # type: ignore[no-untyped-def]
    received: list = []
    closed: list = []
    server = StoreSCP(
        spool=Spool(tmp_path / "spool"),
        ae_title="ICH_TRIAGE",
        bind="127.0.0.1",
        port=free_port(),
        allow=[AllowedPeer("MODALITY"), AllowedPeer("HOSTBOUND", "127.0.0.1"), AllowedPeer("ELSEWHERE", "10.9.9.9")],
        on_instance=received.append,
        on_association_closed=closed.append,
        max_pdu_bytes=64 * 1024,
    )
    server.start()
    server.received, server.closed = received, closed  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_store_writes_instance_as_received_and_acks(scp: StoreSCP) -> None:
    study = generate_uid()
    ds = make_ct(study, generate_uid(), 0)
    assert send(scp.port, [ds]) == [DimseStatus.SUCCESS]
    path = scp.spool.instance_path(study, ds.SOPInstanceUID)
    assert path.exists()
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert scp.received[0].outcome is ReceiveOutcome.STORED  # type: ignore[attr-defined]
    assert wait_for(lambda: scp.closed)  # type: ignore[attr-defined]


def test_duplicate_is_harmless(scp: StoreSCP) -> None:
    ds = make_ct(generate_uid(), generate_uid(), 0)
    assert send(scp.port, [ds, ds]) == [DimseStatus.SUCCESS, DimseStatus.SUCCESS]
    outcomes = [r.outcome for r in scp.received]  # type: ignore[attr-defined]
    assert outcomes == [ReceiveOutcome.STORED, ReceiveOutcome.DUPLICATE]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless])
def test_compressed_and_implicit_syntaxes_stored_as_sent(scp: StoreSCP, tmp_path: Path, syntax: str) -> None:
    study = generate_uid()
    ds = make_ct(study, generate_uid(), 0)
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = write_part10(ds, tmp_path / "in.dcm")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ICH_TRIAGE")
    assert assoc.is_established
    assert assoc.send_c_store(path).Status == DimseStatus.SUCCESS
    assoc.release()
    stored = pydicom.dcmread(scp.spool.instance_path(study, ds.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.pixel_array.shape == (32, 32)


def test_loop_guard_drops_our_own_outputs(scp: StoreSCP) -> None:
    study = generate_uid()
    ours = make_ct(study, generate_uid(), 0, manufacturer=PLUGIN_MANUFACTURER)
    assert send(scp.port, [ours]) == [DimseStatus.SUCCESS]
    assert not scp.spool.instance_path(study, ours.SOPInstanceUID).exists()
    assert scp.received[0].outcome is ReceiveOutcome.IGNORED_OWN_OUTPUT  # type: ignore[attr-defined]


def test_other_sop_classes_acknowledged_and_ignored(scp: StoreSCP) -> None:
    sr = Dataset()
    sr.SOPClassUID = BasicTextSRStorage
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert send(scp.port, [sr]) == [DimseStatus.SUCCESS]
    assert scp.received[0].outcome is ReceiveOutcome.IGNORED_SOP_CLASS  # type: ignore[attr-defined]
    assert scp.spool.study_uids() == []


def test_hostile_uid_cannot_escape_the_spool(scp: StoreSCP, tmp_path: Path) -> None:
    ds = make_ct("../../../escape", generate_uid(), 0)
    assert send(scp.port, [ds]) == [DimseStatus.CANNOT_UNDERSTAND]
    assert not list(tmp_path.rglob("*escape*"))


def test_disk_error_answers_out_of_resources(scp: StoreSCP, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scp.spool, "write_atomic", full)
    ds = make_ct(generate_uid(), generate_uid(), 0)
    assert send(scp.port, [ds]) == [DimseStatus.OUT_OF_RESOURCES]
    assert scp.received[0].outcome is ReceiveOutcome.DISK_ERROR  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert send(scp.port, [ds]) == [DimseStatus.SUCCESS]  # still serving


def test_handler_maps_oserror_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler itself, with an injected ENOSPC: named status, no exception."""
    server = StoreSCP(spool=Spool(tmp_path), ae_title="ICH_TRIAGE", port=free_port())
    ds = make_ct(generate_uid(), generate_uid(), 0)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    monkeypatch.setattr(server.spool, "write_atomic", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
    event = SimpleNamespace(
        assoc=object(),
        request=SimpleNamespace(AffectedSOPClassUID=CTImageStorage, AffectedSOPInstanceUID=ds.SOPInstanceUID),
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        dataset=ds,
        encoded_dataset=lambda: buf.getvalue(),
    )
    assert server.handle_store(event) == DimseStatus.OUT_OF_RESOURCES == 0xA700  # type: ignore[arg-type]


def test_unlisted_calling_ae_is_rejected(scp: StoreSCP) -> None:
    for calling in ("STRANGER", "ELSEWHERE"):  # unknown title; known title from the wrong host
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="ICH_TRIAGE")
        assert assoc.is_rejected
    ae = AE(ae_title="HOSTBOUND")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ICH_TRIAGE")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_wrong_called_ae_is_rejected(scp: StoreSCP) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", scp.port, ae_title="SOMEONE_ELSE").is_rejected


def test_oversized_pdu_and_garbage_leave_scp_serving(scp: StoreSCP) -> None:
    with socket.create_connection(("127.0.0.1", scp.port)) as s:
        s.sendall(b"\x00\x01garbage" * 100)
    with socket.create_connection(("127.0.0.1", scp.port)) as s:  # A-ASSOCIATE-RQ announcing 1 GiB
        s.sendall(struct.pack(">BBL", 0x01, 0x00, 1 << 30) + b"\x00" * 70000)
        s.settimeout(5)
        try:
            s.recv(100)
        except (TimeoutError, ConnectionResetError):
            pass
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ICH_TRIAGE")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


# -- the service with a fake processor ----------------------------------------------------------------------------


@pytest.fixture
def pacs():  # type: ignore[no-untyped-def]
    p = StandInPacs()
    p.start()
    yield p
    p.stop()


def make_service(tmp_path: Path, pacs_port: int, processor: FakeProcessor, **overrides: object) -> Service:
    config = ServiceConfig(
        ae_title="ICH_TRIAGE",
        port=free_port(),
        bind="127.0.0.1",
        pacs=PacsAddress("PACS", "127.0.0.1", pacs_port),
        spool=tmp_path / "spool",
        quiet_seconds=0.3,
        http_port=free_port(),
        http_bind="127.0.0.1",
        retry_base_seconds=0.2,
        retry_cap_seconds=1.0,
        **overrides,  # type: ignore[arg-type]
    )
    service = Service(config, processor_factory=lambda: processor)
    service.start()
    assert service.wait_ready(10)
    return service


def http_json(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_service_processes_a_study_and_sends_results(tmp_path: Path, pacs: StandInPacs) -> None:
    processor = FakeProcessor()
    service = make_service(tmp_path, pacs.port, processor)
    try:
        study, series = generate_uid(), generate_uid()
        half = [make_ct(study, series, i) for i in range(6)]
        assert send(service.dicom_port, half[:3]) == [0, 0, 0]
        assert send(service.dicom_port, half[3:]) == [0, 0, 0]  # a second association, same study
        assert wait_for(lambda: len(pacs.received) == 1)
        assert processor.calls == [6]
        assert pacs.received[0].StudyInstanceUID == study
        assert wait_for(lambda: http_json(service.http_port, f"/studies/{study}")[1]["status"] == "delivered")
        code, status = http_json(service.http_port, f"/studies/{study}")
        assert code == 200 and status["decision"] == "NEGATIVE" and status["versions"][0]["instances"] == 6
        assert wait_for(lambda: not service.spool.study_instances(study))  # keep=none: reclaimed
        assert http_json(service.http_port, "/studies/1.2.3")[0] == 404
        assert http_json(service.http_port, "/studies/bad..uid")[0] == 400
        assert http_json(service.http_port, "/healthz")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/metrics") as r:
            metrics = r.read().decode()
        assert 'ich_instances_received_total{outcome="stored"} 6.0' in metrics
        assert 'ich_studies_processed_total{decision="NEGATIVE"} 1.0' in metrics
        assert "ich_study_latency_seconds_count 1.0" in metrics
        assert 'ich_queue_depth{state="pending"} 0.0' in metrics

        # re-sending the same instances (a PACS re-routing the study) changes nothing
        assert send(service.dicom_port, half) == [0] * 6
        time.sleep(1.0)
        assert processor.calls == [6] and len(pacs.received) == 1
        # a new instance after processing starts version 2
        assert send(service.dicom_port, [make_ct(study, series, 6)]) == [0]
        assert wait_for(lambda: len(pacs.received) == 2)
        assert processor.calls == [6, 1]
        assert http_json(service.http_port, f"/studies/{study}")[1]["versions"][0]["version"] == 2
    finally:
        service.stop(grace=5)


def test_results_wait_in_outbox_while_pacs_is_down(tmp_path: Path, pacs: StandInPacs) -> None:
    pacs.stop()
    processor = FakeProcessor()
    service = make_service(tmp_path, pacs.port, processor)
    try:
        study = generate_uid()
        send(service.dicom_port, [make_ct(study, generate_uid(), i) for i in range(2)])
        assert wait_for(lambda: service.queue.depth()["outbox_pending"] == 1)
        time.sleep(1.0)
        pacs.start()
        assert wait_for(lambda: len(pacs.received) == 1, timeout=15)
        assert wait_for(lambda: service.study_status(study)["status"] == "delivered")  # type: ignore[index]
    finally:
        service.stop(grace=5)


def test_refused_result_is_retried_with_backoff(tmp_path: Path, pacs: StandInPacs) -> None:
    pacs.status = DimseStatus.OUT_OF_RESOURCES
    service = make_service(tmp_path, pacs.port, FakeProcessor())
    try:
        send(service.dicom_port, [make_ct(generate_uid(), generate_uid(), 0)])
        assert wait_for(lambda: service.queue.depth()["outbox_pending"] == 1)
        time.sleep(1.5)
        pacs.status = DimseStatus.SUCCESS
        assert wait_for(lambda: len(pacs.received) == 1, timeout=10)
    finally:
        service.stop(grace=5)


def test_restart_resumes_interrupted_work(tmp_path: Path, pacs: StandInPacs) -> None:
    """Instances acknowledged but never queued, and a job left running, are both processed after restart."""
    spool = Spool(tmp_path / "spool")
    study_a, study_b = generate_uid(), generate_uid()
    for i in range(3):
        buf = BytesIO()
        make_ct(study_a, generate_uid(), i).save_as(buf, enforce_file_format=True)
        spool.store_instance(study_a, generate_uid(), buf.getvalue())
    buf = BytesIO()
    ds_b = make_ct(study_b, generate_uid(), 0)
    ds_b.save_as(buf, enforce_file_format=True)
    spool.store_instance(study_b, ds_b.SOPInstanceUID, buf.getvalue())
    from dicom_io.job_queue import JobQueue

    queue = JobQueue(spool.db_path)
    queue.create_job(study_b)
    assert queue.claim_job() is not None  # "crashed" while running
    queue.close()

    processor = FakeProcessor()
    service = make_service(tmp_path, pacs.port, processor)
    try:
        assert wait_for(lambda: len(pacs.received) == 2)
        assert sorted(processor.calls) == [1, 3]
        assert {d.StudyInstanceUID for d in pacs.received} == {study_a, study_b}
    finally:
        service.stop(grace=5)


def test_stop_parks_a_job_that_does_not_finish(tmp_path: Path, pacs: StandInPacs) -> None:
    processor = FakeProcessor(delay=3.0)
    service = make_service(tmp_path, pacs.port, processor)
    study = generate_uid()
    send(service.dicom_port, [make_ct(study, generate_uid(), 0)])
    assert wait_for(lambda: service.queue.depth()["jobs_running"] == 1)
    service.stop(grace=0.2)
    from dicom_io.job_queue import JobQueue

    queue = JobQueue(Spool(tmp_path / "spool").db_path)
    assert queue.depth()["jobs_pending"] == 1
    queue.close()


def test_worker_never_runs_on_association_thread(tmp_path: Path, pacs: StandInPacs) -> None:
    names: list[str] = []

    class Recording(FakeProcessor):
        def __call__(self, input_dir: Path, output_dir: Path) -> StudyResult:
            names.append(threading.current_thread().name)
            return super().__call__(input_dir, output_dir)

    service = make_service(tmp_path, pacs.port, Recording())
    try:
        send(service.dicom_port, [make_ct(generate_uid(), generate_uid(), 0)])
        assert wait_for(lambda: names)
        assert names[0].startswith("worker-")
    finally:
        service.stop(grace=5)
