"""Effective noise multiplier of TFF's distributed discrete Gaussian (DDP) sum.

``tensorflow_federated.python.aggregators.distributed_dp.DistributedDpSumFactory``
(TFF 0.87, ``mechanism='distributed_dgauss'``, ``rotation_type='hd'``, ``beta=0``) does,
per TFF client: clip to ``l2_clip`` = c; pad to d = next power of 2 of the vector size;
rotate (randomized Hadamard, norm-preserving); scale by s and randomly round to the
integer grid; add discrete Gaussian noise of stddev ``σ_local·s`` with
σ_local = z_nominal·c/√n; secure-sum modulo 2^bits. The scale s = 1/γ is
``_heuristic_scale_factor``:

    s = sqrt(2^(2·bits) − n·k²) / (2·k·sqrt(c²·n²/d + n·σ_local²)),  capped at 1e6,

with k = sqrt(2)·erfcinv(modclip_prob) (default modclip_prob 1e-4) and n the expected
number of TFF clients per round. Rounding inflates the L2 sensitivity of one client to
``inflated_l2 = c + γ√d`` (``discretization.inflated_l2_norm_bound`` with beta = 0) plus
a 1e-5 leeway, while the total noise stddev stays z_nominal·c (in parameter units).
The mechanism is therefore the Gaussian mechanism with the *effective* multiplier

    z_eff = z_nominal · c / (c + γ√d + 1e-5).

Sharded simulation: one TFF client carries S simulated clients; the factory gets
c = S·clip and z_nominal = z/S, so the noise is z·clip; one simulated client moves the
shard's sum by at most ``clip`` before rounding, and coupling the randomized rounding
of the two neighbouring sums (same uniforms) bounds the difference after rounding by
clip + γ√d (joint convexity of the divergence over the shared rounding randomness).
So per simulated client z_eff = z·clip / (clip + γ√d + 1e-5), γ computed with the
shard parameters. The continuous-Gaussian approximation of the sum of n discrete
Gaussians (Kairouz et al. 2021) is accurate when the scaled local stddev σ_local·s is
well above 1; :func:`check_ddp_regime` refuses settings where it is not.
"""

from __future__ import annotations

import math

from scipy import special

from pina_tff.errors import ConfigError

MAX_SCALE_FACTOR = 1e6  # TFF's cap
DEFAULT_MODCLIP_PROB = 1e-4  # TFF's default (our factory does not override it)
LEEWAY = 1e-5  # TFF adds this to the inflated bound
BITS_RANGE = (16, 22)  # accepted bit widths [project rule, spec]
MIN_SCALED_LOCAL_STDDEV = 1.0


def padded_dim(dim: int) -> int:
  """Hadamard rotation pads to the next power of 2."""
  return 2 ** math.ceil(math.log2(max(1, int(dim))))


def scale_factor(local_stddev: float, l2_clip: float, bits: int, num_clients: int,
                 dim: int, modclip_prob: float = DEFAULT_MODCLIP_PROB) -> float:
  """TFF's ``_heuristic_scale_factor`` (dim = the padded dimension), capped at 1e6."""
  k = math.sqrt(2.0) * float(special.erfcinv(modclip_prob))
  n = float(num_clients)
  numer = math.sqrt(2.0 ** (2.0 * bits) - n * k ** 2)
  denom = 2.0 * k * math.sqrt(l2_clip ** 2 * n ** 2 / dim + n * local_stddev ** 2)
  return min(numer / denom, MAX_SCALE_FACTOR)


def ddp_parameters(z_nominal: float, clip: float, shard_size: int, num_shards: int,
                   dim: int, bits: int) -> dict:
  """TFF's DDP internals for our sharded factory: scale s, γ, padded d, z_eff.

  Args: z_nominal: the noise multiplier w.r.t. one simulated client's clip (noise std
  z_nominal·clip); clip: per-simulated-client L2 bound; shard_size S; num_shards n (TFF
  clients per round); dim: vector size before padding; bits: SecAgg bit width.
  """
  d = padded_dim(dim)
  shard_clip = shard_size * clip
  central = z_nominal * clip
  local = central / math.sqrt(num_shards)
  s = scale_factor(local, shard_clip, bits, num_shards, d)
  gamma = 1.0 / s
  z_eff = central / (clip + gamma * math.sqrt(d) + LEEWAY)
  return {"scale": s, "gamma": gamma, "padded_dim": d, "z_effective": z_eff,
          "scaled_local_stddev": local * s}


def effective_multiplier(z_nominal: float, clip: float, shard_size: int,
                         num_shards: int, dim: int, bits: int) -> float:
  """z_eff: the Gaussian multiplier the DDP sum really has for one simulated client."""
  return ddp_parameters(z_nominal, clip, shard_size, num_shards, dim, bits)["z_effective"]


def nominal_for_effective(z_effective: float, clip: float, shard_size: int,
                          num_shards: int, dim: int, bits: int,
                          rel_tol: float = 1e-9) -> float:
  """Smallest nominal z whose effective multiplier is ≥ ``z_effective`` (bisection).

  z_eff is increasing in z_nominal (more noise: coarser grid, but the noise grows
  faster than γ√d). Raises ConfigError if no nominal z reaches the target (bits too
  few for this many shards and dimension).
  """
  if z_effective <= 0:
    return 0.0
  def f(z):
    return effective_multiplier(z, clip, shard_size, num_shards, dim, bits)
  lo, hi = z_effective, 2.0 * z_effective
  while f(hi) < z_effective:
    lo, hi = hi, 2.0 * hi
    if hi > 1e6 * z_effective:
      raise ConfigError(
          f"distributed DP with {bits} bits, {num_shards} shards and dimension {dim} "
          f"cannot reach an effective noise multiplier of {z_effective}.")
  if f(lo) >= z_effective:
    return lo
  while hi - lo > rel_tol * hi:
    mid = 0.5 * (lo + hi)
    if f(mid) >= z_effective:
      hi = mid
    else:
      lo = mid
  return hi


def check_ddp_regime(z_nominal: float, clip: float, shard_size: int, num_shards: int,
                     dim: int, bits: int) -> None:
  """ConfigError unless bits ∈ [16, 22] and the scaled local noise stddev ≥ 1."""
  if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
    raise ConfigError(f"ddp_bits: expected an integer in [{BITS_RANGE[0]}, "
                      f"{BITS_RANGE[1]}], found {bits}.")
  if z_nominal > 0:
    p = ddp_parameters(z_nominal, clip, shard_size, num_shards, dim, bits)
    if p["scaled_local_stddev"] < MIN_SCALED_LOCAL_STDDEV:
      raise ConfigError(
          f"distributed DP: the scaled local noise stddev {p['scaled_local_stddev']:.3g} "
          f"is below {MIN_SCALED_LOCAL_STDDEV} ({bits} bits, {num_shards} shards, "
          f"dimension {dim}); the Gaussian accounting would not hold. Use more bits.")


def calibrate(z_effective: float, clip: float, shard_size: int, num_shards: int,
              dim: int, bits: int) -> dict:
  """The DDP sum's parameters for a target effective multiplier (one place for both
  the secure-sum and the mergeable formulation of the same mechanism).

  Returns ``ddp_parameters(...)`` plus ``z_nominal`` (the multiplier TFF's factory is
  given) and ``noise_scale_int``: the discrete Gaussian scale each TFF client samples
  with, ``ceil(scaled_local_stddev)`` as tensorflow_privacy's
  ``DistributedDiscreteGaussianSumQuery`` rounds it (0 without noise).

  Raises:
    ConfigError: bits outside [16, 22], an unreachable target, or a scaled local
      stddev below 1 (see :func:`check_ddp_regime`).
  """
  z_nom = nominal_for_effective(z_effective, clip, shard_size, num_shards, dim, bits)
  check_ddp_regime(z_nom, clip, shard_size, num_shards, dim, bits)
  params = ddp_parameters(z_nom, clip, shard_size, num_shards, dim, bits)
  params["z_nominal"] = z_nom
  local = params["scaled_local_stddev"]
  params["noise_scale_int"] = int(math.ceil(local)) if local > 0 else 0
  return params
