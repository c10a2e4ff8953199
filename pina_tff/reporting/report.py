"""One call (or `python -m pina_tff.reporting.report GRID_DIR OUT_DIR`) for the full report."""

from __future__ import annotations

import argparse
import os

from pina_tff import errors
from pina_tff.reporting import plots
from pina_tff.reporting import results


def build_report(grid_dir: str, out_dir: str, date: str | None = None) -> dict:
  """Collect the runs below grid_dir; write out_dir/results.md, results.csv and figures
  (results.md includes grid_dir/grid.json's commands and wall clock when present).

  Returns {"results_md": path, "results_csv": path, "plots": [paths], "num_runs": n}.
  Raises DataError if grid_dir holds no run.
  """
  records = results.collect_runs(grid_dir)
  if not records:
    raise errors.DataError(f"{grid_dir}: expected at least one run (a summary.json below "
                           f"it), found none.")
  md = os.path.join(out_dir, "results.md")
  csv_path = os.path.join(out_dir, "results.csv")
  results.write_results_table(records, md, csv_path, date=date,
                              grid_info=results.read_grid_info(grid_dir))
  pngs = plots.make_all_plots(records, os.path.join(out_dir, "figures"))
  return {"results_md": md, "results_csv": csv_path, "plots": pngs,
          "num_runs": len(records)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("grid_dir")
  p.add_argument("out_dir")
  a = p.parse_args(argv)
  out = build_report(a.grid_dir, a.out_dir)
  print(f"{out['num_runs']} runs -> {out['results_md']}, {out['results_csv']}, "
        f"{len(out['plots'])} figures")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
