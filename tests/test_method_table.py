"""The method table is the one place a method's behaviour is named: every reader
(config, accounting, methods, reporting) agrees with it, and each entry says what the
paper's method list says."""
import pytest

from pina_tff import config as config_lib
from pina_tff import method_table as mt
from pina_tff.privacy import accounting
from pina_tff.reporting import plots
from pina_tff.reporting import results

#: (clustered, init, local noise, pina scaling, proximal, step-normalized), by hand
#: from docs (pina-method.md and the baselines' papers).
EXPECTED = {
    "oracle": (True, mt.INIT_RANDOM, False, False, False, False),
    "pina": (True, mt.INIT_STAGE1, False, True, False, False),
    "pina_ri": (True, mt.INIT_RANDOM, False, True, False, False),
    "ifca": (True, mt.INIT_RANDOM, False, False, False, False),
    "ifca_ldp": (True, mt.INIT_RANDOM, True, False, False, False),
    "fedavg": (False, mt.INIT_SHARED, False, False, False, False),
    "fedprox": (False, mt.INIT_SHARED, False, False, True, False),
    "fednova": (False, mt.INIT_SHARED, False, False, False, True),
}


def test_entries_match_the_method_list():
  assert mt.METHOD_KEYS == tuple(EXPECTED)
  for key, want in EXPECTED.items():
    m = mt.get(key)
    assert (m.clustered, m.init, m.local_noise, m.pina_scaling, m.proximal,
            m.step_normalized) == want, key
  assert mt.keys_where(clustered=True) == ("oracle", "pina", "pina_ri", "ifca",
                                           "ifca_ldp")
  assert mt.keys_where(true_clusters=True) == ("oracle",)
  assert mt.num_models("ifca", 4) == 4 and mt.num_models("fedprox", 4) == 1
  with pytest.raises(KeyError):
    mt.get("fedsgd")


def test_readers_take_their_facts_from_the_table():
  assert config_lib.METHODS == mt.METHOD_KEYS
  assert results.METHOD_ORDER == mt.METHOD_KEYS
  assert results.method_name("pina_ri") == "PINA+RI"
  assert results.CLUSTERED_METHODS == mt.keys_where(clustered=True)
  assert plots.METHOD_STYLE["ifca"] == ("#1f77b4", "^")
  assert plots.CLUSTERING_METHODS == ("oracle", "pina", "pina_ri", "ifca_ldp")
  assert plots.CONVERGENCE_METHODS == ("pina", "pina_ri")


@pytest.mark.parametrize("method", list(EXPECTED))
def test_accounting_plan_follows_the_entry(method):
  cfg = config_lib.resolve(config_lib.RunConfig(
      method=method, population=100, num_clusters=2,
      stage0=config_lib.Stage0Config(rounds=2, cohort=10),
      stage1=config_lib.Stage1Config(num_sketch_clients=20),
      stage2=config_lib.Stage2Config(rounds=3, cohort=10)))
  plan = accounting.plan_from_config(cfg)
  assert plan.stage1_enabled == (method == "pina")
  assert plan.stage2_local_dp == (method == "ifca_ldp")


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
