"""pina_tff.reporting.study: runs keyed by grid cell label, per-round clustering, the
validation-only selection rule. References are written by hand from the fake runs."""
import json
import math
import os

import numpy as np
import pytest

from pina_tff.errors import ConfigError
from pina_tff.reporting import study
from tests.reporting import fakes

ACC = {("pina@a", 2): [0.50, 0.54, 0.52], ("pina@b", 2): [0.56, 0.55, 0.60],
       ("pina@a", 8): [0.70, 0.72, 0.71], ("pina@b", 8): [0.60, 0.62, 0.61],
       ("ifca", 2): [0.58, 0.57, 0.59], ("ifca", 8): [0.66, 0.65, 0.64]}


def _grid(tmp_path, split="val"):
  root = tmp_path / "grid"
  for (label, eps), accs in ACC.items():
    for seed, acc in enumerate(accs):
      d = str(root / "fashion_mnist" / label / f"eps_{eps}" / f"seed_{seed}")
      fakes.write_run(d, label.split("@")[0], "fashion_mnist", eps, acc, 0.6 + 0.01 * seed,
                      seed=seed, init_clustering_accuracy=0.3)
      s = json.load(open(os.path.join(d, "summary.json")))
      s.update(eval_split=split, init_centroid_cosine=0.1 * (seed + 1))
      json.dump(s, open(os.path.join(d, "summary.json"), "w"))
  return str(root)


def test_runs_keep_their_variant_label_and_round_values(tmp_path):
  runs = study.collect_study(_grid(tmp_path))
  assert sorted({r.label for r in runs}) == ["ifca", "pina@a", "pina@b"]
  assert len(runs) == 18
  assert len(study.collect_study(_grid(tmp_path), "fashion_mnist")) == 18
  assert study.collect_study(_grid(tmp_path), "digits") == []
  r = [x for x in runs if x.label == "pina@b" and x.epsilon == 8 and x.record.seed == 2][0]
  # fakes: clustering after round t of 8 = final * (0.7 + 0.3 t / 8)
  assert r.clustering_after(2) == pytest.approx(0.62 * (0.7 + 0.3 * 2 / 8))
  assert math.isnan(r.clustering_after(99))
  md = study.study_markdown(runs, labels=["pina@a", "pina@b", "ifca"])
  want = np.array(ACC[("pina@b", 2)]) * 100
  assert f"| pina@b | {want.mean():.1f} ± {np.std(want, ddof=1):.1f} (3) |" in md
  assert "Split scored: val." in md
  assert "| pina@a | 0.200 ± 0.100 (3) | 0.200 ± 0.100 (3) |" in md  # cosine, 3 digits
  assert "loss-based choice" not in md  # no ceiling run carries it here


def test_plot_study_draws_one_figure_per_epsilon_with_the_labels_apart(tmp_path,
                                                                      monkeypatch):
  """One figure per (grid dataset directory, ε), the labels kept apart (each with its
  own seeds' runs, in the order given), two directories of one source dataset never
  pooled; nothing to draw is a DataError."""
  from pina_tff.errors import DataError  # pylint: disable=g-import-not-at-top
  from pina_tff.reporting import plots  # pylint: disable=g-import-not-at-top
  runs = study.collect_study(_grid(tmp_path))
  drawn = []
  real = plots.plot_label_curves

  def spy(groups, out_png, title):
    drawn.append((title, {k: len(v) for k, v in groups.items()}))
    return real(groups, out_png, title)

  monkeypatch.setattr(plots, "plot_label_curves", spy)
  pngs = study.plot_study(runs, ["pina@b", "ifca"], str(tmp_path / "fig"))
  assert [os.path.basename(p) for p in pngs] == ["study_fashion_mnist_eps_2.png",
                                                 "study_fashion_mnist_eps_8.png"]
  assert all(os.path.getsize(p) > 10_000 for p in pngs)
  assert drawn == [("Fashion-MNIST, ε=2", {"pina@b": 3, "ifca": 3}),
                   ("Fashion-MNIST, ε=8", {"pina@b": 3, "ifca": 3})]
  with pytest.raises(DataError, match="no stage-2 rows"):
    plots.plot_label_curves({"x": []}, str(tmp_path / "none.png"), "t")
  # A second grid directory of the same source dataset (the regimes) is never pooled.
  root = tmp_path / "grid"
  fakes.write_run(str(root / "fashion_mnist_2k" / "ifca" / "eps_2" / "seed_0"), "ifca",
                  "fashion_mnist", 2, 0.7, 0.6)
  drawn.clear()
  pngs = study.plot_study(study.collect_study(str(root)), ["ifca"], str(tmp_path / "f2"))
  assert [os.path.basename(p) for p in pngs] == ["study_fashion_mnist_eps_2.png",
                                                 "study_fashion_mnist_eps_8.png",
                                                 "study_fashion_mnist_2k_eps_2.png"]
  assert drawn == [("Fashion-MNIST, ε=2", {"ifca": 3}), ("Fashion-MNIST, ε=8", {"ifca": 3}),
                   ("Fashion-MNIST (fashion_mnist_2k), ε=2", {"ifca": 1})]


def test_a_ceiling_scored_with_the_loss_based_choice_gets_its_own_table(tmp_path):
  root = _grid(tmp_path)
  for seed, choice in enumerate((0.61, 0.63)):
    d = os.path.join(root, "fashion_mnist", "oracle", "eps_2", f"seed_{seed}")
    fakes.write_run(d, "oracle", "fashion_mnist", 2, 0.66, seed=seed)
    s = json.load(open(os.path.join(d, "summary.json")))
    s.update(eval_split="val", accuracy_with_loss_based_choice=choice)
    json.dump(s, open(os.path.join(d, "summary.json"), "w"))
  md = study.study_markdown(study.collect_study(root))
  part = md.split("### Ceilings scored with the loss-based choice")[1].split("###")[0]
  assert "| oracle | 62.0 ± 1.4 (2) | — |" in part
  assert "| ifca |" not in part and "| pina@a |" not in part


def test_choose_best_averages_over_epsilon_and_refuses_test_runs(tmp_path):
  runs = study.collect_study(_grid(tmp_path))
  best, scores = study.choose_best(runs, ["pina@a", "pina@b"])
  # by hand: a = (0.52 + 0.71) / 2 = 0.615; b = (0.57 + 0.61) / 2 = 0.59
  assert best == "pina@a"
  assert scores["pina@a"] == pytest.approx(0.615) and scores["pina@b"] == pytest.approx(0.59)
  diff = study.paired_differences(runs, "pina@b", "ifca")
  assert diff[2][0] == pytest.approx(np.mean([-0.02, -0.02, 0.01]))
  assert diff[2][2] == 3
  test_runs = study.collect_study(_grid(tmp_path / "t", split="test"))
  with pytest.raises(ConfigError, match="validation runs only"):
    study.choose_best(test_runs, ["pina@a", "pina@b"])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
