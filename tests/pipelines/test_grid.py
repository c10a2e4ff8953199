"""Tests for pipelines/grid.py: seeds, best-baseline extra seeds, resume, one population
load per dataset, grid.json. The simulation itself is replaced by a recorder that writes
a realistic run directory (tests/reporting/fakes.py) and checks that it is handed the
shared population."""

import contextlib
import json
import math
import os

import numpy as np
import pytest

from computations.runtime import context
from computations.program import program
from pina_tff import config as config_lib
from pina_tff.reporting import results
from pina_tff.simulation import population as population_lib
from pipelines import grid
from pipelines import presets
from tests.reporting import fakes

# final accuracy of (method, seed); at eps=8 seed 0 FedNova is the best baseline even
# though FedAvg comes first in the tie order and IFCA is best at other seeds.
ACC = {"oracle": 0.90, "pina": 0.80, "pina_ri": 0.75, "ifca": 0.55, "ifca_ldp": 0.40, "fedavg": 0.60,
       "fedprox": 0.58, "fednova": 0.62}


def _acc(method, seed, eps):
  if method == "ifca" and seed != 0:
    return 0.95
  if math.isinf(eps) and method == "fedprox":
    return 0.99  # best baseline at inf differs; inf gets no extra seeds anyway
  return ACC[method] + 0.01 * seed


class Harness:
  """Replaces the TFF context, run_simulation, load_population and dataset prep."""

  def __init__(self, monkeypatch, tmp_path, extra=None, epsilons=(8.0, math.inf)):
    self.calls, self.loads = [], []
    self.pop = object()
    preset = dict(grid.PRESETS["tiny"], epsilons=list(epsilons))
    if extra is not None:
      preset["extra_seeds"] = extra
    monkeypatch.setitem(grid.PRESETS, "t", preset)
    monkeypatch.setattr(context, "tff_context", lambda **kw: contextlib.nullcontext())
    monkeypatch.setattr(program, "run_simulation", self.run_simulation)
    monkeypatch.setattr(population_lib, "load_population", self.load_population)
    self.data = tmp_path / "data" / "digits"
    monkeypatch.setattr(grid, "ensure_dataset", lambda *a: str(self.data))
    self.out = str(tmp_path / "out")

  def load_population(self, clients_dir, lora_rank=1, seed=0, log=None):
    self.loads.append((clients_dir, lora_rank, seed))
    return self.pop

  def run_simulation(self, cfg, clients_dir, run_dir, options, log=None, population=None):
    assert population is self.pop and clients_dir == str(self.data)
    self.calls.append((cfg.method, cfg.privacy.epsilon, cfg.seed,
                       os.path.relpath(run_dir, self.out)))
    fakes.write_run(run_dir, cfg.method, "digits", cfg.privacy.epsilon,
                    _acc(cfg.method, cfg.seed, cfg.privacy.epsilon),
                    0.9 if cfg.method in results.CLUSTERED_METHODS else None,
                    seed=cfg.seed, init_clustering_accuracy=0.7)

  def run(self, **kw):
    kw.setdefault("log", self.logs.append if hasattr(self, "logs") else None)
    return grid.run_grid("t", self.out, **kw)


def _rd(method, eps, seed):
  return os.path.join("digits", method, grid.eps_dirname(eps), f"seed_{seed}")


def test_base_pass_then_extra_seeds_for_pina_pina_ri_and_best_baseline(monkeypatch,
                                                                        tmp_path):
  h = Harness(monkeypatch, tmp_path, extra={"seeds": [1, 2], "epsilons": [8.0]})
  h.logs = []
  pngs = h.run()
  base = [(m, e, 0, _rd(m, e, 0)) for e in (8.0, math.inf) for m in grid.ALL_METHODS]
  extra = [(m, 8.0, s, _rd(m, 8.0, s)) for s in (1, 2)
           for m in ("pina", "pina_ri", "fednova")]
  assert h.calls == base + extra
  assert h.loads == [(str(h.data), 1, 0)]          # the population loaded ONCE
  # progress: i of N with an ETA from finished cells
  progress = [l for l in h.logs if l.startswith("[")]
  assert progress[0] == "[1/22] run digits oracle eps=8 seed=0 (ETA unknown)"
  assert progress[-1].startswith("[22/22] run digits fednova eps=8 seed=2 (ETA 0:00:")
  assert "best baseline at digits eps=8 (seed 0): fednova" in h.logs
  info = json.load(open(os.path.join(h.out, "grid.json")))
  (inv,) = info["invocations"]
  assert inv["best_baselines"] == {"digits": {"8": "fednova"}}
  assert inv["seeds"] == [0] and inv["extra_seeds"] == {"seeds": [1, 2], "epsilons": ["8"]}
  assert [(r["method"], r["seed"], r["status"]) for r in inv["runs"]] == [
      (m, s, "ran") for m, _, s, _ in h.calls]
  assert all(r["wall_s"] >= 0 for r in inv["runs"])
  assert inv["runs"][0]["run_dir"] == _rd("oracle", 8.0, 0)
  assert inv["eval_split"] == "val" and inv["overrides"] == {}
  assert inv["start"] <= inv["end"] and inv["command"].startswith("run_grid(preset='t'")
  assert inv["git_commit"] is None or len(inv["git_commit"].split("-")[0]) == 40
  assert info["wall_clock_s"] == inv["wall_s"] >= sum(r["wall_s"] for r in inv["runs"])
  assert set(inv["population_load_s"]) == {"digits"}
  md = open(os.path.join(h.out, "results.md")).read()
  v = 100 * np.array([_acc("pina", s, 8.0) for s in (0, 1, 2)])
  assert f"**{v.mean():.1f} ± {np.std(v, ddof=1):.1f} (3)**" in md
  assert "Picked: Digits ε=8: FedNova" in md and "Wall clock of the whole grid" in md
  assert any(p.endswith("clustering_digits_eps_8.png") for p in pngs)


def test_variants_overrides_and_eval_split_reach_the_run_config(monkeypatch, tmp_path):
  h = Harness(monkeypatch, tmp_path, epsilons=(8.0,))
  cfgs = []
  inner = h.run_simulation

  def spy(cfg, *a, **kw):
    cfgs.append(cfg)
    return inner(cfg, *a, **kw)

  monkeypatch.setattr(program, "run_simulation", spy)
  h.run(methods=["pina@restore", "pina@none", "ifca"], extra_seeds=False,
        eval_split="test",
        overrides=grid.parse_overrides(["stage2.restore_max_gain=2.5", "stage2.rounds=3"]))
  assert [c[3] for c in h.calls] == [_rd(m, 8.0, 0) for m in
                                     ("pina@restore", "pina@none", "ifca")]
  a, b, c = cfgs
  assert (a.method, a.stage2.normality_rule, a.stage2.scaling) == ("pina", "restore", "pina")
  assert (b.method, b.stage2.normality_rule, b.stage2.scaling) == ("pina", "restore", "none")
  assert all(x.eval_split == "test" and x.stage2.restore_max_gain == 2.5
             and x.stage2.rounds == 3 for x in cfgs)
  inv = json.load(open(os.path.join(h.out, "grid.json")))["invocations"][0]
  assert inv["eval_split"] == "test"
  assert grid.PRESETS["fmnist"]["chosen_on"]["stage2.normality_rule"].startswith(
      "validation split")
  assert inv["overrides"] == {"stage2.restore_max_gain": 2.5, "stage2.rounds": 3}
  with pytest.raises(config_lib.ConfigError, match="variant"):
    grid.split_method("pina@bogus")
  with pytest.raises(config_lib.ConfigError, match="combine"):
    grid.split_method("pina@spectral+bogus")
  got = grid.variant_settings("sketch_all+spectral+restore+bound", 2000, 4)
  assert got == {"stage1": {"num_sketch_clients": 2000, "spectral_dims": 4,
                            "centroid_norm_bound": 1.0},
                 "stage2": {"normality_rule": "restore"}}
  with pytest.raises(config_lib.ConfigError, match="KEY.PATH=VALUE"):
    grid.parse_overrides(["stage2.rounds"])


def test_datasets_subset_runs_only_the_named_datasets():
  """--datasets keeps the preset's order and settings of the named datasets only; an
  unknown name is a ConfigError that lists the valid ones."""
  plan = grid.grid_plan("regimes", ["ifca"], None, 0, None, False,
                        datasets=["fashion_mnist_2k", "fashion_mnist_c2"])
  assert list(plan.preset["datasets"]) == ["fashion_mnist_2k", "fashion_mnist_c2"]
  assert plan.preset["datasets"]["fashion_mnist_2k"] == (
      grid.PRESETS["regimes"]["datasets"]["fashion_mnist_2k"])
  assert len(grid.PRESETS["regimes"]["datasets"]) == 3  # the preset is not changed
  with pytest.raises(config_lib.ConfigError, match="valid: fashion_mnist_c2"):
    grid.grid_plan("regimes", ["ifca"], None, 0, None, False, datasets=["cifar10"])
  got = grid.variant_settings("dplloyd+basis8", 10000, 4)
  assert got == {"stage1": {"centroids": "dp_lloyd", "lloyd_steps": 3,
                            "lloyd_start": "public", "public_basis_dims": 8}}


def test_resume_skips_finished_runs_and_loads_nothing(monkeypatch, tmp_path):
  h = Harness(monkeypatch, tmp_path, extra={"seeds": [1], "epsilons": [8.0]},
              epsilons=(8.0,))
  h.run()
  assert len(h.calls) == 8 + 3 and len(h.loads) == 1
  h.calls.clear(), h.loads.clear()
  h.run()
  assert h.calls == [] and h.loads == []            # nothing to run: no population load
  # one run lost: only it runs again, with one load
  os.remove(os.path.join(h.out, _rd("pina_ri", 8.0, 1), "summary.json"))
  h.run(command="pina-grid --preset=t")
  assert h.calls == [("pina_ri", 8.0, 1, _rd("pina_ri", 8.0, 1))] and len(h.loads) == 1
  info = json.load(open(os.path.join(h.out, "grid.json")))
  assert len(info["invocations"]) == 3
  assert [r["status"] for r in info["invocations"][1]["runs"]] == ["skipped"] * 11
  assert info["invocations"][2]["command"] == "pina-grid --preset=t"
  assert info["wall_clock_s"] == pytest.approx(
      sum(i["wall_s"] for i in info["invocations"]), abs=0.01)


def test_old_layout_run_counts_as_done_for_its_seed(monkeypatch, tmp_path):
  h = Harness(monkeypatch, tmp_path, epsilons=(8.0,))
  old = os.path.join(h.out, "digits", "fedavg", "eps_8")
  fakes.write_run(old, "fedavg", "digits", 8, 0.5, seed=0)
  other = os.path.join(h.out, "digits", "ifca", "eps_8")
  fakes.write_run(other, "ifca", "digits", 8, 0.5, seed=3)   # another seed: not done
  h.run(methods=["fedavg", "ifca"])
  assert h.calls == [("ifca", 8.0, 0, _rd("ifca", 8.0, 0))]
  assert grid.finished_run(os.path.join(old, "seed_0"), 0) == old
  assert grid.finished_run(os.path.join(old, "seed_1"), 1) is None
  recs = results.collect_runs(h.out)
  assert sorted((r.method, r.seed) for r in recs) == [("fedavg", 0), ("ifca", 0),
                                                      ("ifca", 3)]


def test_seeds_flag_runs_every_cell_with_every_seed(monkeypatch, tmp_path):
  h = Harness(monkeypatch, tmp_path, extra={"seeds": [1, 2], "epsilons": [8.0]},
              epsilons=(8.0,))
  h.run(seeds=[0, 1], methods=["pina", "fedavg", "ifca"])  # ifca best at seed 1 only
  assert h.calls == (
      [(m, 8.0, s, _rd(m, 8.0, s)) for s in (0, 1) for m in ("pina", "fedavg", "ifca")]
      + [(m, 8.0, 2, _rd(m, 8.0, 2)) for m in ("pina", "fedavg")])  # seed 1 already done
  assert len(h.loads) == 1
  h.calls.clear()
  h2 = Harness(monkeypatch, tmp_path / "b", extra={"seeds": [1, 2], "epsilons": [8.0]},
               epsilons=(8.0,))
  h2.run(methods=["pina"], extra_seeds=False)
  assert h2.calls == [("pina", 8.0, 0, _rd("pina", 8.0, 0))]
  with pytest.raises(config_lib.ConfigError, match="repeat"):
    h2.run(seeds=[1, 1])
  with pytest.raises(config_lib.ConfigError, match="unknown preset"):
    grid.run_grid("nope", h2.out)


@pytest.mark.parametrize("preset", sorted(grid.PRESETS))
def test_every_preset_config_validates(preset):
  p = grid.PRESETS[preset]
  for dataset, spec in p["datasets"].items():
    for eps in p["epsilons"]:
      for method in grid.ALL_METHODS:
        d = json.loads(json.dumps(presets.for_population(p["config"],
                                                         spec["num_clients"])))
        d.update(method=method, num_clusters=spec["num_clusters"], seed=0)
        d.setdefault("privacy", {})["epsilon"] = eps
        cfg = config_lib.validate(config_lib.from_dict(d))
        assert cfg.stage2.cohort <= spec["num_clients"]
  for e in p.get("extra_seeds", {}).get("epsilons", []):
    assert e in p["epsilons"]


def test_fmnist_presets():
  fm = grid.PRESETS["fmnist"]
  assert fm["datasets"] == {"fashion_mnist": {"num_clients": 10000, "num_clusters": 4}}
  assert fm["epsilons"] == [2.0, 8.0, math.inf]
  assert fm["extra_seeds"] == {"seeds": [1, 2], "epsilons": [2.0, 8.0]}
  c = fm["config"]
  assert c["population"] == c["stage0"]["cohort"] == c["stage2"]["cohort"] == 10000
  demo = grid.PRESETS["fmnist_demo"]
  assert demo["datasets"] == {"fashion_mnist_2k": {"source": "fashion_mnist",
                                                   "num_clients": 2000, "num_clusters": 4}}
  assert "extra_seeds" not in demo
  assert demo["config"]["stage2"]["cohort"] == demo["config"]["population"] == 2000


def test_ensure_dataset_prepares_the_source_dataset(monkeypatch, tmp_path):
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  seen = []

  def prepare(cfg):
    seen.append(cfg)
    os.makedirs(cfg.output_dir)
    open(os.path.join(cfg.output_dir, "manifest.json"), "w").write("{}")

  monkeypatch.setattr(beam_prepare, "prepare", prepare)
  spec = grid.PRESETS["fmnist_demo"]["datasets"]["fashion_mnist_2k"]
  path = grid.ensure_dataset("fashion_mnist_2k", spec, str(tmp_path), 3, lambda m: None)
  assert path == str(tmp_path / "fashion_mnist_2k")
  (cfg,) = seen
  assert (cfg.dataset, cfg.num_clients, cfg.num_clusters, cfg.output_dir, cfg.seed) == (
      "fashion_mnist", 2000, 4, path, 3)
  assert grid.ensure_dataset("fashion_mnist_2k", spec, str(tmp_path), 3, None) == path
  assert len(seen) == 1                              # already prepared


def test_cli_bad_seeds_is_a_config_error(tmp_path):
  """main raises it; cli's one `except` of user errors makes it one `error:` line
  (tests/pipelines/test_bad_input_table.py runs the console script)."""
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  with flagsaver.flagsaver():
    grid.FLAGS(["pina-grid", "--seeds=0,x", f"--output_dir={tmp_path}"])
    with pytest.raises(config_lib.ConfigError) as e:
      grid.main(["pina-grid"])
  assert str(e.value) == "--seeds must be integers separated by commas, found ['0', 'x']"


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
