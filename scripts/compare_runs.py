"""Compares the runs of two reference-run directories (scripts/reference_runs.sh):
summary.json field by field and metrics.csv row by row, apart from the wall-clock
fields. Exit status 0 when every run is identical, 1 otherwise (the differences are
printed).

  python scripts/compare_runs.py BEFORE_DIR AFTER_DIR
"""
import csv
import json
import os
import sys

#: Fields that measure time, not behaviour.
WALL_CLOCK = {"wall_clock_s", "wall_s"}


def flat(d, prefix=""):
  """{'a.b': value} of a nested dict."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def summary_diffs(a: dict, b: dict) -> list:
  """[(field, before, after)] of the summary fields that differ (wall clock aside)."""
  fa, fb = flat(a), flat(b)
  return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
          if k.split(".")[-1] not in WALL_CLOCK and fa.get(k) != fb.get(k)]


def metric_rows(path: str) -> list:
  """metrics.csv rows without the wall-clock column (as strings, compared exactly)."""
  with open(path, encoding="utf-8") as f:
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK}
            for row in csv.DictReader(f)]


def compare(before: str, after: str) -> list:
  """One line per run: identical, or what differs."""
  lines = []
  for run in sorted(set(os.listdir(before)) | set(os.listdir(after))):
    a, b = os.path.join(before, run), os.path.join(after, run)
    if not (os.path.isdir(a) and os.path.isdir(b)):
      lines.append(f"{run}: only in {'before' if os.path.isdir(a) else 'after'}")
      continue
    with open(os.path.join(a, "summary.json"), encoding="utf-8") as f:
      sa = json.load(f)
    with open(os.path.join(b, "summary.json"), encoding="utf-8") as f:
      sb = json.load(f)
    diffs = summary_diffs(sa, sb)
    rows_a = metric_rows(os.path.join(a, "metrics.csv"))
    same_rows = rows_a == metric_rows(os.path.join(b, "metrics.csv"))
    ok = not diffs and same_rows
    lines.append(f"{run}: {'identical' if ok else 'DIFFERENT'} (summary fields differing: "
                 f"{diffs or 'none'}; metrics.csv rows identical: {same_rows}, "
                 f"{len(rows_a)} rows)")
  return lines


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__, file=sys.stderr)
    return 2
  lines = compare(argv[1], argv[2])
  print("\n".join(lines))
  return 0 if all(": identical" in line for line in lines) else 1


if __name__ == "__main__":
  raise SystemExit(main(sys.argv))
