"""``ich-triage demo``: the whole DICOM loop on one machine, with nothing else installed.

Starts a small local PACS stand-in (a pynetdicom Storage SCP) and the service on free loopback ports, sends a
head CT study over C-STORE, waits for the Secondary Capture and SR to come back, and saves the Secondary
Capture as PNG and the report as JSON. The study is ``--study DIR``, else the real CQ500 series
(``shared/data/cq500-dicom/CQ500-CT-0`` beside the repository) when present, else a synthetic head CT with a
bleed (``training.phantoms``). This is a CLI: it prints its progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import StoragePresentationContexts

from dicom_io.spool import check_uid
from dicom_io.store_scp import ACCEPTED_TRANSFER_SYNTAXES, VERIFICATION, DimseStatus
from dicom_io.store_scu import Delivery, send_files
from monai_app.service import Service
from monai_app.service_config import AllowedPeer, KeepPolicy, PacsAddress, ServiceConfig

LOGGER = logging.getLogger(__name__)

PACS_AE = "DEMO_PACS"
MODALITY_AE = "DEMO_CT"
PLUGIN_AE = "ICH_TRIAGE"
CQ500_RELATIVE = Path("shared") / "data" / "cq500-dicom" / "CQ500-CT-0"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study", type=Path, help="folder of DICOM files to send (default: CQ500-CT-0 if present, else a phantom)"
    )
    parser.add_argument(
        "--phantom", action="store_true", help="send a synthetic head CT with a bleed, even if CQ500 is present"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("ich-triage-demo"),
        help="where the PNG and report go (default ./ich-triage-demo)",
    )
    parser.add_argument("--model", type=Path, help="model artifact (default: the bundled model)")
    parser.add_argument(
        "--quiet-seconds", dest="quiet_seconds", type=float, default=1.0, help="study quiet period (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")
    parser.add_argument("--verbose", action="store_true", help="show the service's log lines too")


class _Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_cq500(start: Path | None = None) -> Path | None:
    """``shared/data/cq500-dicom/CQ500-CT-0`` in the repository or any folder above it, if present."""
    here = (start or Path(__file__)).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / CQ500_RELATIVE
        if candidate.is_dir() and any(candidate.glob("*.dcm")):
            return candidate
    return None


class StandInPacs:
    """A minimal PACS for the demo: a Storage SCP that keeps what it is sent, in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.received: list[Path] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=PACS_AE)
        ae.add_supported_context(VERIFICATION)
        for ctx in StoragePresentationContexts:
            ae.add_supported_context(str(ctx.abstract_syntax), list(ACCEPTED_TRANSFER_SYNTAXES))
        self._ae = ae
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        path = self.folder / f"{check_uid(str(request.AffectedSOPInstanceUID))}.dcm"
        path.write_bytes(event.encoded_dataset())
        with self._lock:
            self.received.append(path)
        return int(DimseStatus.SUCCESS)

    def start(self) -> None:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def _phantom_study(folder: Path) -> list[Path]:
    from training.phantoms import PhantomSpec, make_phantom, write_dicom_series

    phantom = make_phantom(PhantomSpec(n_slices=32, size=256, bleed="intraparenchymal", seed=7))
    return write_dicom_series(phantom, folder, series_description="DEMO HEAD 5mm (synthetic)")


def _save_pngs(ds: Dataset, out: Path, stem: str) -> list[Path]:
    from PIL import Image

    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    images = list(arr) if frames > 1 else [arr]
    paths = []
    for i, frame in enumerate(images):
        path = out / (f"{stem}.png" if len(images) == 1 else f"{stem}-{i + 1}.png")
        mode = "RGB" if frame.ndim == 3 else "L"
        Image.fromarray(frame.astype("uint8"), mode=mode).save(path)
        paths.append(path)
    return paths


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the results came back and were saved."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="    %(levelname)s %(name)s: %(message)s"
        )
    progress = _Progress()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ich-triage-demo-"))
    service: Service | None = None
    pacs = StandInPacs(work / "pacs")
    try:
        # 1. the study
        if args.study is not None:
            files = sorted(p for p in Path(args.study).rglob("*") if p.is_file())
            source = f"{args.study} ({len(files)} files)"
        elif not args.phantom and (cq500 := find_cq500()) is not None:
            files = sorted(cq500.glob("*.dcm"))
            source = f"real CQ500 series {cq500} ({len(files)} slices)"
        else:
            files = _phantom_study(work / "study")
            source = f"synthetic head CT with an intraparenchymal bleed ({len(files)} slices)"
        if not files:
            print(f"no files to send in {args.study}", file=sys.stderr)
            return 2
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        progress.step(f"study: {source}")

        # 2. the PACS stand-in and the service
        pacs.start()
        progress.step(f"local PACS stand-in {PACS_AE} listening on 127.0.0.1:{pacs.port}")
        config = ServiceConfig(
            ae_title=PLUGIN_AE,
            port=_free_port(),
            bind="127.0.0.1",
            pacs=PacsAddress(PACS_AE, "127.0.0.1", pacs.port),
            spool=work / "spool",
            allow=(AllowedPeer(MODALITY_AE, "127.0.0.1"),),
            quiet_seconds=args.quiet_seconds,
            http_port=_free_port(),
            http_bind="127.0.0.1",
            model=args.model,
            keep=KeepPolicy.RESULTS,
            retry_base_seconds=1.0,
            retry_cap_seconds=10.0,
        )
        service = Service(config)
        service.start()
        progress.step(
            f"service {PLUGIN_AE} listening on 127.0.0.1:{service.dicom_port}, "
            f"status on http://127.0.0.1:{service.http_port}/studies/{study_uid}; loading the model ..."
        )
        if not service.wait_ready(min(300.0, args.timeout)):
            print("the service did not become ready (model not loaded?); run with --verbose", file=sys.stderr)
            return 1
        progress.step("model loaded")

        # 3. send the study, as a modality or a PACS routing rule would
        t_send = time.monotonic()
        results = send_files(
            files,
            host="127.0.0.1",
            port=service.dicom_port,
            called_ae_title=PLUGIN_AE,
            calling_ae_title=MODALITY_AE,
            timeout=60,
        )
        sent = sum(r.delivery is Delivery.SENT for r in results)
        progress.step(f"sent {sent}/{len(files)} instances with C-STORE in {time.monotonic() - t_send:.1f} s")
        if sent == 0:
            print("the service took no instance", file=sys.stderr)
            return 1

        # 4. follow the study until its results are in the PACS stand-in
        deadline = time.monotonic() + args.timeout
        last = None
        status: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            status = service.study_status(study_uid)
            state = (status or {}).get("status", "receiving")
            if state != last:
                detail = ""
                if state == "sending" and status:
                    detail = f": {status['decision']}, {len(status['versions'][0]['outputs'])} object(s) to send"
                progress.step(f"study {state}{detail}")
                last = state
            if state in ("delivered", "failed"):
                break
            time.sleep(0.2)
        if last != "delivered" or status is None:
            print(f"the study did not come back in time (last status: {last})", file=sys.stderr)
            return 1

        # 5. save what came back
        returned = [dcmread(p) for p in list(pacs.received)]
        progress.step(f"the PACS stand-in received {len(returned)} object(s) in study {study_uid}")
        pngs: list[Path] = []
        dicom_out = out / "dicom"
        dicom_out.mkdir(exist_ok=True)
        for path, ds in zip(list(pacs.received), returned, strict=True):
            shutil.copy2(path, dicom_out / path.name)
            if str(ds.SOPClassUID).startswith(SECONDARY_CAPTURE_PREFIX):
                pngs += _save_pngs(ds, out, f"secondary-capture-{len(pngs) + 1}")
        report = service.report(study_uid)
        report_path = out / "report.json"
        report_path.write_text(json.dumps(report, indent=2))
        progress.step("done")
        print()
        decision = (report or {}).get("decision")
        probability = (report or {}).get("probability")
        print(
            f"  decision:        {decision}"
            + (f" (study probability {probability:.3f})" if probability is not None else "")
        )
        for p in pngs:
            print(f"  Grad-CAM SC:     {p}")
        print(f"  report:          {report_path}")
        print(f"  DICOM returned:  {dicom_out}/ ({len(returned)} files: SC + SR)")
        print("  Research triage aid, NOT FOR DIAGNOSTIC USE.")
        return 0
    finally:
        if service is not None:
            service.stop(grace=5)
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)
