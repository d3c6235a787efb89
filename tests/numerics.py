"""Tolerances that hold on every x86-64 CPU, for the tests marked ``numerics``.

The same float32 computation sums in a different order on another CPU: PyTorch picks a kernel family at run time
(ATen's ``default`` / ``avx2`` / ``avx512`` vectorisation, oneDNN's AVX2 / AVX-512 / AMX matmuls), and each
groups a dot product differently. Two mathematically equal results (a cached decode and the full forward, a
batched and a one-by-one log-likelihood) then differ by a few units in the last place *of the terms summed*, which
is an absolute error proportional to the magnitude of the values, not a fixed 1e-5: a cached decode of logits
of ~10 passed ``atol=1e-5`` on an AVX-512 CPU and failed it on one with AMX. So:

- where exactness is the point (two code paths that must compute the same function), compare in float64, where
  the reordering error is ~1e-13 of the magnitude and a real bug (a wrong position, mask or cache slot) is O(1);
- where float32 is the point (what training actually computes), compare relative to the magnitude of the
  reference with a tolerance a few hundred float32 ulps wide, ``close(a, b)``.

``scripts/kernel-families.sh`` runs every test marked ``numerics`` under each kernel family this machine can
emulate (native, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``, ``ATEN_CPU_CAPABILITY=default``).
"""

from __future__ import annotations

import torch

F32_REL = 1e-4  # measured on one machine under the four families: two float32 paths of one model (cached vs full
# forward, weights x 6, logits ~10) differ by up to 1.3e-5 of the largest |logit| (1.17e-5 native AVX-512,
# 1.33e-5 ATen default): 1e-4 (~800 ulps) leaves a 7x margin and still catches any real error (>= 1e-3 relative)
F64_REL = 1e-10  # float64 reordering error is ~1e-15 relative: five decades of margin, and a bug is O(1e-3) or more


def scale(ref: torch.Tensor) -> float:
    """The magnitude an absolute tolerance is taken relative to: the reference's largest |value| (1 for an all-zero
    reference). One scale per tensor, not per element: an element near zero carries the rounding of the large
    terms it was summed from."""
    m = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return m if m > 0 else 1.0


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float | None = None) -> bool:
    """``actual`` equals ``expected`` up to reordering of sums: ``max |a - e| <= rel * max(max |e|, 1)``.
    ``rel`` defaults by dtype: ``F64_REL`` for float64, else ``F32_REL``."""
    if rel is None:
        rel = F64_REL if expected.dtype == torch.float64 else F32_REL
    if actual.shape != expected.shape:
        return False
    return float((actual.detach().to(expected.dtype) - expected.detach()).abs().max()) <= rel * scale(expected)


def gap(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """For assert messages: the largest difference and the scale it is measured against."""
    d = float((actual.detach().to(expected.dtype) - expected.detach()).abs().max())
    return f"max |diff| {d:.3g} at scale {scale(expected):.3g} ({d / scale(expected):.3g} relative)"
