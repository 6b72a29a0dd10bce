"""ICH triage: a MONAI Deploy application for intracranial hemorrhage triage of head CT (research use only)."""

from __future__ import annotations

import os
import resource

# Holoscan (under the MONAI Deploy SDK) logs every graph start at INFO and warns below a 32 MB stack;
# the application runs once per study, so quiet the former and raise the soft limit where allowed.
os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")
_STACK = 32 * 1024 * 1024
_soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
if _soft != resource.RLIM_INFINITY and _soft < _STACK and (_hard == resource.RLIM_INFINITY or _hard >= _STACK):
    resource.setrlimit(resource.RLIMIT_STACK, (_STACK, _hard))

__version__ = "0.1.0"
