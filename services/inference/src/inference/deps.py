"""Dependencies of the inference routes (who may call: common.deps.require)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from common.deps import app_state
from inference.runtime import Runtime

RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
