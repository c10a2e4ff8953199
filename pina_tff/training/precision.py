"""Arithmetic precision of the client work: 'float32', 'bfloat16', or 'auto'.

With 'bfloat16' the frozen tail's matmuls and the local training's forward and backward
passes run in bfloat16 (`pina_tff.training.local`); everything the privacy guarantee
rests on stays float32: the master weights the clients update, the update deltas
θ_local − θ, their norms and clipping, local noise, the C-slot sums, and after the
client everything on the server (DDP encoding, scaling, optimizer). The loss and the
LayerNorms of the tail are also computed in float32.

'auto' runs bfloat16 where the CPU has native bfloat16 arithmetic (the /proc/cpuinfo
flags `avx512_bf16` or `amx_bf16`: AVX-512 BF16 dot products or AMX tiles, which
oneDNN's matmuls use) and float32 elsewhere. Without them bfloat16 still runs, but
emulated (slower than float32): 'bfloat16' asked for explicitly is obeyed.

No TensorFlow here: the program resolves the choice before building computations.
"""

from __future__ import annotations

import dataclasses

PRECISIONS = ("float32", "bfloat16", "auto")
#: What a computation runs in (the resolved choice).
COMPUTE_DTYPES = ("float32", "bfloat16")
#: /proc/cpuinfo flags of native bfloat16 arithmetic.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
  """The CPU feature flags of the first processor listed in ``cpuinfo`` (x86 `flags`,
  Arm `Features`); empty when the file cannot be read."""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


def native_bf16_flags(cpuinfo: str = CPUINFO) -> tuple[str, ...]:
  """Which of `NATIVE_BF16_FLAGS` the CPU has."""
  flags = cpu_flags(cpuinfo)
  return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A precision choice and what runs: ``compute_dtype`` is 'float32' or 'bfloat16';
  ``native_bf16_flags`` are the CPU flags found (recorded in summary.json)."""
  requested: str
  compute_dtype: str
  native_bf16_flags: tuple[str, ...]

  def as_dict(self) -> dict:
    return {"requested": self.requested, "compute_dtype": self.compute_dtype,
            "cpu_native_bf16_flags": list(self.native_bf16_flags),
            "float32_kept_for": "master weights, update deltas, norms, clipping, noise, "
                                "C-slot sums, DDP encoding, server scaling and optimizer, "
                                "loss, LayerNorms"}


def resolve(requested: str, cpuinfo: str = CPUINFO) -> Resolved:
  """Resolves 'auto' on this machine.

  Raises:
    ValueError: ``requested`` is not one of `PRECISIONS`.
  """
  if requested not in PRECISIONS:
    raise ValueError(f"unknown precision {requested!r}; valid values: "
                     f"{', '.join(PRECISIONS)}")
  flags = native_bf16_flags(cpuinfo)
  if requested == "auto":
    dtype = "bfloat16" if flags else "float32"
  else:
    dtype = requested
  return Resolved(requested, dtype, flags)
