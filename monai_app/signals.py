"""Keep the process's own SIGTERM/SIGINT handling while a Holoscan graph runs.

Holoscan installs its own SIGINT/SIGTERM handlers for every ``Application.run()``
(``GXFExecutor::setup_signal_handlers``): they interrupt the graph and force the whole process to exit 3 s later
if the running operator does not return, which a CPU inference does not. The DICOM service must instead finish
or park its job on SIGTERM, so the application puts the process's own dispositions back as soon as its graph
starts. ``sigaction`` is process-wide and may be called from any thread (POSIX), unlike ``signal.signal``.
"""

from __future__ import annotations

import ctypes
import logging
import signal

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SIGACTION_SIZE = 256  # larger than struct sigaction on every Linux ABI (152 bytes on x86_64 glibc)


class SignalDispositions:
    """The SIGTERM/SIGINT dispositions at construction, to be put back with :meth:`restore`."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._saved: dict[int, ctypes.Array[ctypes.c_char]] = {}
        for signum in _SIGNALS:
            buf = ctypes.create_string_buffer(_SIGACTION_SIZE)
            if self._libc.sigaction(int(signum), None, buf) == 0:
                self._saved[int(signum)] = buf

    def restore(self) -> None:
        for signum, buf in self._saved.items():
            if self._libc.sigaction(signum, buf, None) != 0:
                logger.warning("could not restore the handler of signal %d (errno %d)", signum, ctypes.get_errno())
