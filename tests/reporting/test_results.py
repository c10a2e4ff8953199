"""Tests for pina_tff.reporting.results."""

import csv
import json
import math
import os

import numpy as np
import pytest

from pina_tff import errors
from pina_tff.reporting import results
from tests.reporting import fakes


def _table_rows(md: str, title: str) -> dict:
  """{method display name: [cells]} of the Markdown table under `## title`."""
  lines = md.split("\n")
  i = lines.index(f"## {title}") + 1
  while not lines[i].startswith("| Method"):
    i += 1
  header = [c.strip() for c in lines[i].strip("|").split("|")]
  out = {}
  for line in lines[i + 2:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    out[cells[0]] = dict(zip(header[1:], cells[1:]))
  return out


@pytest.fixture()
def grid(tmp_path):
  fakes.make_grid(str(tmp_path / "grid"))
  return str(tmp_path / "grid")


def test_collect_runs_reads_every_run_in_canonical_order(grid, tmp_path):
  # An unfinished job directory is ignored.
  fakes.write_run(str(tmp_path / "grid" / "femnist" / "pina" / "eps_8.tmp-123"), "pina",
                  "femnist", 8, 0.5)
  recs = results.collect_runs(grid)
  assert len(recs) == sum(len(v) for v in fakes.GRID.values())
  assert [r.dataset for r in recs[:10]] == ["fashion_mnist"] * 10
  fm = [r.method for r in recs if r.dataset == "fashion_mnist"]
  assert fm == sorted(fm, key=results.method_sort_key)
  r = results.select(recs, "fashion_mnist", "inf", "pina")[0]
  assert math.isinf(r.epsilon) and r.num_clusters == 4
  assert r.metrics["method"][0] == "pina"
  rows = r.stage_rows(2)
  np.testing.assert_array_equal(rows["round"], np.arange(1, 9))
  assert rows["test_accuracy"][-1] == pytest.approx(0.88)
  assert np.isnan(r.stage_rows(0)["w_0"]).all()
  assert math.isnan(results.select(recs, "femnist", 2, "fedavg")[0].scalar(
      "clustering_accuracy"))


def test_collect_runs_any_layout_and_errors(tmp_path):
  fakes.write_run(str(tmp_path / "flat" / "run_a"), "ifca", "digits", 8, 0.5)
  fakes.write_run(str(tmp_path / "flat" / "x" / "y" / "z"), "fedprox", "digits", 8, 0.4)
  recs = results.collect_runs(str(tmp_path / "flat"))
  assert [r.method for r in recs] == ["ifca", "fedprox"]
  assert results.collect_runs(str(tmp_path / "flat" / "run_a" / "..")) != []
  os.makedirs(tmp_path / "empty")
  assert results.collect_runs(str(tmp_path / "empty")) == []
  with pytest.raises(errors.DataError, match="expected a directory"):
    results.collect_runs(str(tmp_path / "nope"))
  bad = tmp_path / "bad" / "r"
  os.makedirs(bad)
  (bad / "summary.json").write_text("{not json")
  with pytest.raises(errors.DataError, match="summary.json"):
    results.collect_runs(str(tmp_path / "bad"))


def test_epsilon_helpers():
  assert results.parse_epsilon("inf") == math.inf
  assert results.parse_epsilon(None) == math.inf
  assert results.parse_epsilon(8) == 8.0
  assert results.format_epsilon(2.0) == "ε=2"
  assert results.format_epsilon(math.inf) == "ε=∞"
  assert results.epsilon_token(math.inf) == "inf"
  assert results.epsilon_token(0.5) == "0.5"


def test_results_table_bold_best_ties_and_missing(grid, tmp_path):
  recs = results.collect_runs(grid)
  md_path, csv_path = str(tmp_path / "out" / "results.md"), str(tmp_path / "out" / "r.csv")
  md = results.write_results_table(recs, md_path, csv_path, date="2024-05-01")
  assert open(md_path).read() == md
  assert md.startswith("# Results (2024-05-01)")
  acc = _table_rows(md, "Final test accuracy (%)")
  assert list(acc) == ["Oracle", "PINA", "PINA+RI", "IFCA", "IFCA+LDP", "FedAvg", "FedProx",
                       "FedNova"]
  cols = list(acc["PINA"])
  assert [c.split(" [^")[0] for c in cols] == [
      "Fashion-MNIST ε=2", "Fashion-MNIST ε=8", "Fashion-MNIST ε=∞", "FEMNIST ε=2"]
  fm2, fm8, fminf, fe2 = cols
  assert acc["PINA"][fm2] == "**80.1**"
  assert acc["PINA+RI"][fm2] == "75.2"
  assert acc["IFCA+LDP"][fm2] == "—"            # missing cell
  assert acc["PINA"][fm8] == "**85.3**"          # tie: both bold
  assert acc["PINA+RI"][fm8] == "**85.3**"
  assert acc["IFCA+LDP"][fm8] == "70.0"
  assert acc["IFCA+LDP"][fminf] == "**90.0**"
  assert acc["PINA"][fminf] == "88.0"
  assert acc["PINA+RI"][fminf] == "—"
  assert acc["FedAvg"][fe2] == "**62.0**" and acc["PINA"][fe2] == "60.0"
  assert all(v == "—" for v in acc["IFCA"].values())
  cl = _table_rows(md, "Clustering accuracy (%)")
  assert cl["PINA"][fm2] == "**97.0**" and cl["PINA+RI"][fm2] == "90.0"
  assert cl["PINA"][fminf] == "**100.0**" and cl["IFCA+LDP"][fminf] == "**100.0**"
  assert "FedAvg" not in cl                      # not a clustered method
  assert list(cl) == ["Oracle", "PINA", "PINA+RI", "IFCA", "IFCA+LDP",
                      "PINA stage 1 (k-means)"]
  assert cl["PINA stage 1 (k-means)"][fm2] == "85.0"   # never bold
  assert all(v == "—" for v in [cl[m][fe2] for m in cl][:4])  # femnist: unknown
  # footnotes per column, with achieved eps and noise multipliers
  notes = [l for l in md.split("\n") if l.startswith("[^")]
  assert len(notes) == 4
  assert notes[0].startswith("[^1]: Fashion-MNIST, ε=2: PINA: ε achieved 1.96")
  assert "z0=1.1, z1=0, z2=0.9" in notes[0] and "local ε1=1.5" in notes[0]
  assert "ε achieved n/a" in notes[2]


def test_results_table_mean_over_repeated_runs(tmp_path):
  fakes.write_run(str(tmp_path / "g" / "s0"), "ifca", "digits", 8, 0.50, seed=0)
  fakes.write_run(str(tmp_path / "g" / "s1"), "ifca", "digits", 8, 0.60, seed=1)
  fakes.write_run(str(tmp_path / "g" / "s2"), "fedavg", "digits", 8, 0.55, seed=2)
  md = results.results_markdown(results.collect_runs(str(tmp_path / "g")), date="d")
  acc = _table_rows(md, "Final test accuracy (%)")
  col = next(iter(acc["IFCA"]))
  assert acc["IFCA"][col] == f"**55.0 ± {np.std([50.0, 60.0], ddof=1):.1f} (2)**"
  assert acc["FedAvg"][col] == "**55.0**"


def test_results_csv_one_row_per_run(grid, tmp_path):
  recs = results.collect_runs(grid)
  csv_path = str(tmp_path / "results.csv")
  results.write_results_table(recs, str(tmp_path / "results.md"), csv_path)
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(recs)
  assert {os.path.normpath(r["run_dir"]) for r in rows} == {
      os.path.normpath(r.run_dir) for r in recs}
  cols = list(rows[0])
  assert cols[:16] == [k for k in results.RESULTS_CSV_FIRST if "." not in k]
  assert {"config.seed", "config.clip.l2", "config.rotations_deg"} <= set(cols)
  by = {(r["dataset"], r["method"], r["epsilon_target"]): r for r in rows}
  assert by[("fashion_mnist", "pina", "inf")]["epsilon_achieved"] == ""
  assert float(by[("fashion_mnist", "pina", "2")]["z0"]) == 1.1
  assert float(by[("femnist", "fedavg", "2")]["final_accuracy"]) == 0.62
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_program_style_run(tmp_path):
  """What computations/program/program.py writes: a `key` column from tff's CSV release manager,
  quoted cells, rounds as {stage0, stage2}, 'inf' strings, extra objects, subdirs."""
  run = tmp_path / "grid" / "digits" / "pina" / "eps_inf"
  fakes.write_run(str(run), "pina", "digits", math.inf, 0.9, 0.95, num_clusters=2)
  with open(run / "metrics.csv", newline="") as f:
    rows = list(csv.reader(f))
  with open(run / "metrics.csv", "w", newline="") as f:
    w = csv.writer(f, quoting=csv.QUOTE_ALL)
    w.writerow(["key"] + rows[0])
    w.writerows([str(i + 1)] + r for i, r in enumerate(rows[1:]))
  summary = json.loads((run / "summary.json").read_text())
  summary.update(method_name="PINA", epsilon_achieved="inf", local_epsilon1="inf",
                 rounds={"stage0": 2, "stage2": 8}, privacy={"kind": "ddp", "z": [1, 2]})
  (run / "summary.json").write_text(json.dumps(summary))
  os.makedirs(run / "checkpoints" / "program_state_10002")
  (run / "checkpoints" / "summary.json").write_text("not a run")  # pruned: inside a run
  recs = results.collect_runs(str(tmp_path / "grid"))
  assert len(recs) == 1
  r = recs[0]
  assert r.stage_rows(2)["key"][0] == 3 and r.metrics["method"][0] == "pina"
  md = results.write_results_table(recs, str(tmp_path / "r.md"), str(tmp_path / "r.csv"))
  assert "| PINA | **90.0** |" in md and "ε achieved ∞" in md
  with open(tmp_path / "r.csv", newline="") as f:
    row = next(csv.DictReader(f))
  assert row["rounds.stage2"] == "8" and row["rounds"] == ""
  assert row["privacy.kind"] == "ddp" and row["privacy.z"] == "[1, 2]"
  assert row["epsilon_target"] == "inf" and row["epsilon_achieved"] == "inf"


def test_seed_layout_and_old_layout_read_together(tmp_path):
  root = tmp_path / "g"
  fakes.make_seed_grid(str(root))
  # Older layout: a run directly in eps_<e>, with seed runs added below it later.
  old = root / "fashion_mnist" / "ifca" / "eps_8"
  fakes.write_run(str(old), "ifca", "fashion_mnist", 8, 0.5, seed=0)
  fakes.write_run(str(old / "seed_1"), "ifca", "fashion_mnist", 8, 0.7, seed=1)
  os.makedirs(old / "checkpoints")
  (old / "checkpoints" / "summary.json").write_text("not a run")  # still pruned
  recs = results.collect_runs(str(root))
  assert len(recs) == sum(len(v) for v in fakes.SEED_GRID.values()) + 2
  ifca = results.select(recs, "fashion_mnist", 8, "ifca")
  assert sorted((r.seed, r.scalar("final_accuracy")) for r in ifca) == [(0, 0.5), (1, 0.7)]
  pina2 = results.select(recs, "fashion_mnist", 2, "pina")
  assert sorted(r.seed for r in pina2) == [0, 1, 2]
  # the seed from the directory name when the summary has none
  d = tmp_path / "h" / "seed_7"
  fakes.write_run(str(d), "pina", "digits", 8, 0.5)
  summary = json.loads((d / "summary.json").read_text())
  del summary["config"]
  (d / "summary.json").write_text(json.dumps(summary))
  assert results.collect_runs(str(tmp_path / "h"))[0].seed == 7


def test_mean_std_cells_match_numpy(tmp_path):
  fakes.make_seed_grid(str(tmp_path / "g"))
  md = results.results_markdown(results.collect_runs(str(tmp_path / "g")), date="d")
  acc = _table_rows(md, "Final test accuracy (%)")
  col2, col8 = list(acc["PINA"])
  for name, key in (("PINA", "pina"), ("PINA+RI", "pina_ri"), ("FedAvg", "fedavg")):
    v = 100 * np.array(fakes.SEED_GRID[(2, key)])
    text = f"{v.mean():.1f} ± {np.std(v, ddof=1):.1f} (3)"
    assert acc[name][col2].strip("*") == text, (name, acc[name][col2], text)
  assert acc["PINA"][col2] == "**80.3 ± 2.5 (3)**"     # by hand: 80, 83, 78
  assert acc["FedNova"][col2] == "64.0"                  # one seed: no ± and no n
  assert acc["PINA"][col8] == "**86.0 ± 1.0 (3)**"
  cl = _table_rows(md, "Clustering accuracy (%)")
  v = 100 * (np.array(fakes.SEED_GRID[(2, "pina")]) + 0.1)
  assert cl["PINA"][col2] == f"**{v.mean():.1f} ± {np.std(v, ddof=1):.1f} (3)**"
  assert cl["PINA stage 1 (k-means)"][col2] == "60.0 ± 10.0 (3)"  # 50, 60, 70
  assert results.mean_std([1.0]) == (1.0, 0.0, 1)
  m, sd, n = results.mean_std([1.0, 2.0, 4.0])
  assert (m, n) == (pytest.approx(7 / 3), 3) and sd == pytest.approx(np.std([1, 2, 4],
                                                                           ddof=1))


def test_best_baseline_rule(tmp_path):
  fakes.make_seed_grid(str(tmp_path / "g"))
  recs = results.collect_runs(str(tmp_path / "g"))
  # seed 0 at eps 2: fedavg 0.60, fednova 0.64 -> fednova (pina's 0.80 is no baseline)
  assert results.best_baseline(recs, "fashion_mnist", 2, seed=0) == "fednova"
  # seed 2: only fedavg ran -> fedavg; any seed: fedavg's 0.65 beats fednova's 0.64
  assert results.best_baseline(recs, "fashion_mnist", 2, seed=2) == "fedavg"
  assert results.best_baseline(recs, "fashion_mnist", 2) == "fedavg"
  assert results.best_baseline(recs, None, 8, seed=0) == "fedavg"
  assert results.best_baseline(recs, "fashion_mnist", math.inf) is None
  assert results.best_baseline(recs, "fashion_mnist", 2, seed=0,
                               baselines=["fedavg"]) == "fedavg"
  # a tie goes to the first of BASELINES (fedavg before fedprox); NaN is ignored
  fakes.write_run(str(tmp_path / "t" / "a"), "fedprox", "d", 8, 0.5, seed=0)
  fakes.write_run(str(tmp_path / "t" / "b"), "fedavg", "d", 8, 0.5, seed=0)
  fakes.write_run(str(tmp_path / "t" / "c"), "ifca", "d", 8, math.nan, seed=0)
  assert results.best_baseline(results.collect_runs(str(tmp_path / "t")), "d", 8) == \
      "fedavg"


def _set_summary(run_dir, **kw):
  path = os.path.join(run_dir, "summary.json")
  with open(path) as f:
    summary = json.load(f)
  summary.update(kw)
  with open(path, "w") as f:
    json.dump(summary, f)


def test_achieved_epsilon_server_and_release(tmp_path):
  g = tmp_path / "g"
  a = fakes.write_run(str(g / "a"), "pina", "digits", 8, 0.5)
  b = fakes.write_run(str(g / "b"), "fedavg", "digits", 8, 0.4)
  c = fakes.write_run(str(g / "c"), "ifca", "digits", 8, 0.4)
  fakes.write_run(str(g / "d"), "fedprox", "digits", 8, 0.4)        # today's fields only
  _set_summary(a, epsilon_server=7.5, epsilon_release=3.25,         # top level
               threat_model_calibrated="release")
  _set_summary(b, privacy={"epsilon_server": "inf", "epsilon_release": 6.0})
  _set_summary(c, privacy={"epsilons": {"server": 7.0, "release": 5.0}})
  recs = {r.method: r for r in results.collect_runs(str(g))}
  assert recs["pina"].privacy_epsilons() == (7.5, 3.25)
  assert recs["fedavg"].privacy_epsilons() == (math.inf, 6.0)
  assert recs["ifca"].privacy_epsilons() == (7.0, 5.0)
  server, release = recs["fedprox"].privacy_epsilons()
  assert server == pytest.approx(8 * 0.98) and math.isnan(release)
  md = results.results_markdown(list(recs.values()), date="d")
  eps = _table_rows(md, "Achieved ε (server / release)")
  col = next(iter(eps["PINA"]))
  assert eps["PINA"][col] == "7.5 / 3.25"
  assert eps["FedAvg"][col] == "∞ / 6"
  assert eps["IFCA"][col] == "7 / 5"
  assert eps["FedProx"][col] == "7.84 / n/a"
  assert "FedNova" not in eps                                        # no run at all
  assert "PINA: ε achieved 7.84, δ=1e-05, z0=1.1" in md              # footnote kept
  assert "Noise calibrated to the release threat model." in md
  assert "holds only if the cohort schedule is secret" in md


def test_grid_section_from_grid_json(tmp_path):
  fakes.make_seed_grid(str(tmp_path / "g"))
  info = {"invocations": [
      {"start": "2026-11-23T10:00:00+00:00", "end": "2026-11-23T11:00:00+00:00",
       "wall_s": 3600.0, "command": "pina-grid --preset=fmnist --output_dir=o",
       "git_commit": "abc", "seeds": [0], "runs": [{"status": "ran"}] * 3,
       "extra_seeds": {"seeds": [1, 2], "epsilons": ["2", "8"]},
       "best_baselines": {"fashion_mnist": {"2": "fednova", "8": "fedavg"}}},
      {"start": "2026-11-23T12:00:00+00:00", "end": "2026-11-23T12:30:00+00:00",
       "wall_s": 1800.5, "command": "pina-grid --preset=fmnist --output_dir=o",
       "git_commit": "def", "seeds": [0], "runs": [{"status": "skipped"}] * 3,
       "extra_seeds": {"seeds": [1, 2], "epsilons": ["2", "8"]},
       "best_baselines": {"fashion_mnist": {"2": "fednova", "8": "fedavg"}}}]}
  (tmp_path / "g" / "grid.json").write_text(json.dumps(info))
  assert results.read_grid_info(str(tmp_path / "g")) == info
  assert results.read_grid_info(str(tmp_path)) is None
  md = results.write_results_table(results.collect_runs(str(tmp_path / "g")),
                                   str(tmp_path / "r.md"), str(tmp_path / "r.csv"),
                                   grid_info=info)
  assert "**Wall clock of the whole grid:** 5400 s (1 h 30 min), over 2 invocation(s) " \
         "(3 runs executed" in md
  assert "`pina-grid --preset=fmnist --output_dir=o`" in md
  assert md.count("pina-grid --preset") == 1
  assert "`abc`, `def`" in md
  assert "2026-11-23T10:00:00+00:00 to 2026-11-23T12:30:00+00:00" in md
  assert "Fashion-MNIST ε=2: FedNova; Fashion-MNIST ε=8: FedAvg" in md
  assert "highest final test accuracy of the base-seed run" in md
  (tmp_path / "g" / "grid.json").write_text("[1]")
  with pytest.raises(errors.DataError, match="grid.json"):
    results.read_grid_info(str(tmp_path / "g"))



def test_ceiling_scored_by_the_loss_based_choice_gets_its_own_row(tmp_path):
  """An oracle run whose summary has `accuracy_with_loss_based_choice` adds a row
  with that value's mean ± std under the accuracy table (never bold); grids without
  it have no such row."""
  for seed, (acc, choice) in enumerate(((0.70, 0.66), (0.72, 0.68))):
    run = str(tmp_path / "g" / "d" / "oracle" / f"seed_{seed}")
    fakes.write_run(run, "oracle", "d", 8, acc, seed=seed)
    _set_summary(run, accuracy_with_loss_based_choice=choice)
  fakes.write_run(str(tmp_path / "g" / "d" / "ifca"), "ifca", "d", 8, 0.6, seed=0)
  md = results.results_markdown(results.collect_runs(str(tmp_path / "g")), date="d")
  acc = _table_rows(md, "Final test accuracy (%)")
  (col,) = list(acc["IFCA"])
  v = np.array([66.0, 68.0])
  assert acc["Oracle, scored by the loss-based choice"][col] == \
      f"{v.mean():.1f} ± {np.std(v, ddof=1):.1f} (2)"
  assert acc["Oracle"][col] == "71.0 ± 1.4 (2)" and acc["IFCA"][col] == "**60.0**"
  fakes.write_run(str(tmp_path / "h" / "o"), "oracle", "d", 8, 0.7, seed=0)
  md = results.results_markdown(results.collect_runs(str(tmp_path / "h")), date="d")
  assert "loss-based choice" not in md


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
