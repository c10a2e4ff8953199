"""Prints a grid's study tables by cell label (METHOD@VARIANT kept apart).

  .venv/bin/python scripts/study_table.py GRID_DIR [--labels=a,b,...] \
      [--choose=pina@restore,pina@none,...] [--rounds=1,2,5] [--plot=DIR]

--choose applies `pina_tff.reporting.study.choose_best` (validation runs only) to the
listed candidates and prints the pick with each candidate's score.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pina_tff.errors import PinaError  # noqa: E402
from pina_tff.reporting import study  # noqa: E402


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("grid_dir")
  ap.add_argument("--labels", default="")
  ap.add_argument("--dataset", default=None, help="the grid's dataset directory "
                  "(every dataset's runs are pooled without it)")
  ap.add_argument("--choose", default="")
  ap.add_argument("--rounds", default="1,2,5")
  ap.add_argument("--plot", default=None, help="a directory: per-ε figures of the "
                  "labels' clustering and accuracy per round, one per grid dataset directory "
                  "(study_<directory>_eps_<ε>.png)")
  a = ap.parse_args()
  try:
    runs = study.collect_study(a.grid_dir, a.dataset)
    labels = [x for x in a.labels.split(",") if x] or None
    print(study.study_markdown(runs, labels, [int(r) for r in a.rounds.split(",")]))
    if a.plot:
      for png in study.plot_study(runs, labels, a.plot):
        print(f"figure: {png}")
    if a.choose:
      best, scores = study.choose_best(runs, a.choose.split(","))
      print("### Choice (mean over epsilon of the mean final validation accuracy)\n")
      for lab, sc in sorted(scores.items(), key=lambda kv: -kv[1]):
        print(f"- {lab}: {100 * sc:.2f}{'  <- chosen' if lab == best else ''}")
  except PinaError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
