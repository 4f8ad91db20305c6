"""Dependencies of the gateway's own routes (api.py). Proxied requests never reach the
router: their checks are gateway/admission.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from common.deps import app_state
from gateway.runtime import Runtime

RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
