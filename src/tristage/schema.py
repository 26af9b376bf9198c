"""Base class for the typed params of one stage (or one component of a stage).

Each library package owns its params schema (`tristage/<pkg>/config.py`, pure pydantic,
no torch import); `tristage.config` composes them into the whole `params.yaml`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Section", "Field", "Fraction", "PosInt", "NonNegInt", "PosFloat", "NonNegFloat", "Path"]


class Section(BaseModel):
    """Unknown keys are errors; values are validated on assignment too.

    Fields typed `Path` (or `Path | None`) that hold a relative path are resolved against
    the folder of the params file by `tristage.config.load_params`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
