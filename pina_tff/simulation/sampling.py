"""Cohort schedule of a simulated run: who takes part in round r of stage s.

Every cohort is a function of (key, stage, round) only (the `rng_streams.COHORT`
stream of the key: the run's seed in simulation mode, the run's secret cohort key in
secure mode), so the whole schedule is
known in advance from the run's seed (a simulation; a deployment would sample on the
devices), a resumed run sees the same cohorts, and the accountant can count each
client's participations before the run starts.

Schemes (``SCHEMES``):

* ``'poisson'`` (default): each of the P clients joins the round independently with
  probability q = expected_size / P (q = 1: every client, every round). The cohort size
  is random (Binomial(P, q)); the aggregate keeps the fixed denominator qP. This is the
  sampling under which ``PoissonSampled(q, Gaussian(z))`` is a valid DP bound.
* ``'fixed'``: exactly ``expected_size`` clients drawn uniformly without replacement
  (the scheme the program used before). The Poisson bound does *not* hold for it; the
  accountant gives it no amplification.

Stage 1 (the sketches) always uses a fixed-size draw (:func:`sketch_cohort`); it is
accounted without amplification.
"""

from __future__ import annotations

import numpy as np

from pina_tff import rng_streams
from pina_tff.errors import ConfigError

SCHEMES = ("poisson", "fixed")


def _check(population: int, expected_size: int, scheme: str) -> None:
  if scheme not in SCHEMES:
    raise ConfigError(f"unknown sampling scheme {scheme!r}; valid: {', '.join(SCHEMES)}.")
  if population < 1:
    raise ConfigError(f"population must be >= 1, found {population}.")
  if not 1 <= expected_size <= population:
    raise ConfigError(f"cohort must be in [1, population={population}], found "
                      f"{expected_size}.")


def sampling_probability(expected_size: int, population: int) -> float:
  """q = expected_size / P, each client's probability of joining a round."""
  _check(population, expected_size, "poisson")
  return float(expected_size) / float(population)


def cohort(seed: int, stage: int, rnd: int, population: int, expected_size: int,
           scheme: str = "poisson") -> np.ndarray:
  """Sorted client ids (int64) taking part in round ``rnd`` of ``stage``.

  'poisson': each client independently with probability expected_size / population;
  'fixed': exactly expected_size clients without replacement. Deterministic in
  (seed, stage, rnd).
  """
  _check(population, expected_size, scheme)
  rng = rng_streams.generator(seed, rng_streams.COHORT, stage, rnd)
  if scheme == "fixed":
    return np.sort(rng.choice(population, size=expected_size, replace=False))
  if expected_size == population:
    return np.arange(population, dtype=np.int64)
  q = expected_size / population
  return np.flatnonzero(rng.random(population) < q).astype(np.int64)


def schedule(seed: int, stage: int, rounds: int, population: int, expected_size: int,
             scheme: str = "poisson") -> np.ndarray:
  """Participation matrix bool [rounds, P]: row r-1 is the cohort of round r."""
  out = np.zeros((max(rounds, 0), population), dtype=bool)
  for r in range(1, rounds + 1):
    out[r - 1, cohort(seed, stage, r, population, expected_size, scheme)] = True
  return out


def participation_counts(seed: int, stage: int, rounds: int, population: int,
                         expected_size: int, scheme: str = "poisson") -> np.ndarray:
  """int [P]: in how many of rounds 1..``rounds`` of ``stage`` each client takes part."""
  if rounds <= 0:
    return np.zeros(population, dtype=np.int64)
  return schedule(seed, stage, rounds, population, expected_size,
                  scheme).sum(axis=0).astype(np.int64)


def max_cohort_size(seed: int, stage: int, rounds: int, population: int,
                    expected_size: int, scheme: str = "poisson") -> int:
  """Largest cohort over rounds 1..``rounds`` (sizes the padded shard count)."""
  if rounds <= 0:
    return 0
  return int(schedule(seed, stage, rounds, population, expected_size,
                      scheme).sum(axis=1).max())


def sketch_cohort(seed: int, population: int, size: int) -> np.ndarray:
  """Stage 1: ``size`` distinct clients (fixed-size draw, stage 1 round 0)."""
  return cohort(seed, 1, 0, population, min(size, population), "fixed")
