"""The floating-point dtypes a config or a flag can name: ``fp32`` and ``bf16``.

``DType`` is the one name → dtype map of the project (run configs, CLI flags, model directories).
It needs only NumPy (``ml_dtypes`` provides bfloat16), so parsing a config imports no JAX.
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.StrEnum):
    """``fp32`` or ``bf16``. ``.dtype`` is the NumPy dtype, which JAX and Flax take as
    ``dtype`` / ``param_dtype`` (``jnp.bfloat16`` is ``ml_dtypes.bfloat16``)."""

    FP32 = "fp32"
    BF16 = "bf16"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self is DType.FP32 else np.dtype(ml_dtypes.bfloat16)

    @classmethod
    def parse(cls, name: str) -> DType:
        """``DType(name)`` with an error that lists the choices."""
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"unsupported dtype {name!r}: expected one of {choices}") from None
