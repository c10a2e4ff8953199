"""The method table: one entry per method, the one place a method's behaviour is named.

Plain Python (no TensorFlow): read by ``pina_tff.config`` (valid method keys),
``pina_tff.privacy.accounting`` (what a method is accounted for),
``computations.learning.methods`` (client work, aggregator, scaling), ``computations.program.program``
(stage-1 init, summary fields) and ``pina_tff.reporting`` (names, order, plots).
Adding a method means adding one entry here and, if it trains differently, one
client-work variant in ``pina_tff.training.local``.

  method    clusters  init          scaling      client extra              accounting
  oracle    C         random        none         trains its TRUE cluster   central
  pina      C         stage 1       cfg scaling  -                         central + local ε1
  pina_ri   C         random        cfg scaling  -                         central
  ifca      C         random        none         -                         central
  ifca_ldp  C         random        none         local noise, plain sum    local DP (stage 2)
  fedavg    1         A0, B0 = 0    none         -                         central
  fedprox   1         A0, B0 = 0    none         proximal term mu          central
  fednova   1         A0, B0 = 0    none         Δ / local steps           central

The oracle is the ceiling of every table, not a method anyone can run: each client
trains (and is scored with) the model of its true cluster, known only in simulation;
the same DP, rounds and aggregator as the others. Its clustering accuracy is that of
the loss-based choice under its models (what the best models allow).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

INIT_STAGE1, INIT_RANDOM, INIT_SHARED = "stage1", "random", "shared"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """What one method is.

  Attributes:
    key: config value (``RunConfig.method``).
    name: display name (summaries, tables, plots).
    clustered: C cluster models, each client picks the one with the lowest loss
      (False: one model).
    true_clusters: the client trains, and is scored with, the model of its true
      cluster (the oracle; simulation only, needs known clusters).
    init: stage-2 start: ``INIT_STAGE1`` (sketches + k-means, spends stage-1 ε),
      ``INIT_RANDOM`` (random LoRA offsets of norm ≈ S1, no privacy cost) or
      ``INIT_SHARED`` (A0, B0 = 0 for the single model).
    local_noise: each client adds N(0, (z2·S2)²) to its update itself (local DP; the
      aggregate is a plain sum and stage 2 is accounted as local DP).
    pina_scaling: the aggregate is scaled by ``stage2.scaling`` (otherwise 'none').
    proximal: FedProx's proximal term ``stage2.fedprox_mu``.
    step_normalized: FedNova: Δ / local steps on the client, × expected steps on the
      server.
    colour, marker: plot style (matplotlib).
    plot_clustering: drawn in the clustering-accuracy panel of the convergence plot.
    plot_convergence: drawn (with its convergence round) in the test-accuracy panel.
  """
  key: str
  name: str
  clustered: bool
  init: str
  true_clusters: bool = False
  local_noise: bool = False
  pina_scaling: bool = False
  proximal: bool = False
  step_normalized: bool = False
  colour: str = "#000000"
  marker: str = "."
  plot_clustering: bool = False
  plot_convergence: bool = False

  @property
  def uses_stage1(self) -> bool:
    """Stage 1 (sketches, local DP ε1) runs for this method."""
    return self.init == INIT_STAGE1


_TABLE = (
    MethodSpec("oracle", "Oracle", clustered=True, init=INIT_RANDOM, true_clusters=True,
               colour="#7f7f7f", marker="*", plot_clustering=True),
    MethodSpec("pina", "PINA", clustered=True, init=INIT_STAGE1, pina_scaling=True,
               colour="#d62728", marker="o", plot_clustering=True, plot_convergence=True),
    MethodSpec("pina_ri", "PINA+RI", clustered=True, init=INIT_RANDOM, pina_scaling=True,
               colour="#ff7f0e", marker="s", plot_clustering=True, plot_convergence=True),
    MethodSpec("ifca", "IFCA", clustered=True, init=INIT_RANDOM, colour="#1f77b4",
               marker="^"),
    MethodSpec("ifca_ldp", "IFCA+LDP", clustered=True, init=INIT_RANDOM, local_noise=True,
               colour="#17becf", marker="v", plot_clustering=True),
    MethodSpec("fedavg", "FedAvg", clustered=False, init=INIT_SHARED, colour="#2ca02c",
               marker="D"),
    MethodSpec("fedprox", "FedProx", clustered=False, init=INIT_SHARED, proximal=True,
               colour="#9467bd", marker="P"),
    MethodSpec("fednova", "FedNova", clustered=False, init=INIT_SHARED,
               step_normalized=True, colour="#8c564b", marker="X"),
)

#: Every method by key, in the canonical (table and plot) order.
METHODS: Dict[str, MethodSpec] = {m.key: m for m in _TABLE}
#: Valid ``RunConfig.method`` values, canonical order.
METHOD_KEYS: Tuple[str, ...] = tuple(METHODS)


def get(key: str) -> MethodSpec:
  """The entry of method ``key``.

  Raises:
    KeyError: ``key`` is not a method (config validation reports it as a ConfigError
      before any caller gets here).
  """
  return METHODS[key]


def keys_where(**attrs) -> Tuple[str, ...]:
  """Method keys, canonical order, whose entries have every given attribute value."""
  return tuple(k for k, m in METHODS.items()
               if all(getattr(m, a) == v for a, v in attrs.items()))


def num_models(method: str, num_clusters: int) -> int:
  """Models trained in stage 2: ``num_clusters`` for clustered methods, else 1."""
  return num_clusters if get(method).clustered else 1
