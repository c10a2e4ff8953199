"""scripts/compare_runs.py on hand-made run directories: identical apart from the
wall clock passes; one changed metric value or summary field fails and is named."""
import csv
import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts", "compare_runs.py")
_spec = importlib.util.spec_from_file_location("compare_runs", _PATH)
compare_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_runs)


def _run(root, name, acc=0.5, wall=1.0, loss="0.25"):
  d = root / name
  d.mkdir(parents=True)
  (d / "summary.json").write_text(json.dumps(
      {"final_accuracy": acc, "wall_clock_s": wall, "privacy": {"delta": 1e-5}}))
  with open(d / "metrics.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, ["round", "train_loss", "wall_s"])
    w.writeheader()
    w.writerow({"round": 1, "train_loss": loss, "wall_s": wall})


def test_identical_apart_from_wall_clock(tmp_path):
  _run(tmp_path / "a", "r", wall=1.0)
  _run(tmp_path / "b", "r", wall=9.0)
  assert compare_runs.main(["x", str(tmp_path / "a"), str(tmp_path / "b")]) == 0


@pytest.mark.parametrize("change", [{"acc": 0.51}, {"loss": "0.26"}])
def test_a_changed_value_fails(tmp_path, change, capsys):
  _run(tmp_path / "a", "r")
  _run(tmp_path / "b", "r", **change)
  assert compare_runs.main(["x", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
  out = capsys.readouterr().out
  assert "DIFFERENT" in out
  if "acc" in change:
    assert "final_accuracy" in out


def test_a_missing_run_fails(tmp_path):
  _run(tmp_path / "a", "r")
  _run(tmp_path / "a", "s")
  _run(tmp_path / "b", "r")
  assert compare_runs.main(["x", str(tmp_path / "a"), str(tmp_path / "b")]) == 1


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
