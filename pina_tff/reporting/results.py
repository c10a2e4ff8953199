"""Read simulation run directories and write the Table-1 style results grid.

A run directory (written by `computations/program.py`) holds
  summary.json  run-level scalars (method, dataset, epsilon_target, final_accuracy, ...)
  metrics.csv   one row per round (stage, round, method, test_accuracy, ...,
                count_c, norm_c, w_c, scale_c for each cluster c)
`collect_runs` finds every summary.json below a grid directory (any layout) and returns
one `RunRecord` per run. Accuracies are fractions in [0, 1]; tables show them in %.
Plain csv/json/NumPy: no pandas.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pina_tff import errors

METHOD_ORDER = ("pina", "pina_ri", "ifca", "ifca_ldp", "fedavg", "fedprox", "fednova")
METHOD_NAMES = {
    "pina": "PINA", "pina_ri": "PINA+RI", "ifca": "IFCA", "ifca_ldp": "IFCA+LDP",
    "fedavg": "FedAvg", "fedprox": "FedProx", "fednova": "FedNova",
}
DATASET_ORDER = ("cifar10", "fashion_mnist", "femnist", "digits")
DATASET_NAMES = {
    "cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST", "femnist": "FEMNIST",
    "digits": "Digits",
}
MISSING = "\u2014"  # em dash for an absent cell
STAGE_WARMUP = 0
STAGE_TRAIN = 2


# ----------------------------------------------------------------------------- names

def method_name(method: str) -> str:
  """Display name of a method key ('pina_ri' -> 'PINA+RI'); unknown keys unchanged."""
  return METHOD_NAMES.get(method, method)


def dataset_name(dataset: str) -> str:
  """Display name of a dataset key ('cifar10' -> 'CIFAR-10'); unknown keys unchanged."""
  return DATASET_NAMES.get(dataset, dataset)


def parse_epsilon(value: Any) -> float:
  """epsilon_target as a float: 2 -> 2.0, 'inf' / 'Infinity' / '∞' / None -> inf."""
  if value is None:
    return math.inf
  if isinstance(value, str):
    v = value.strip().lower()
    if v in ("inf", "+inf", "infinity", "\u221e", "none", ""):
      return math.inf
    return float(v)
  return float(value)


def format_epsilon(eps: float) -> str:
  """'ε=2', 'ε=8', 'ε=∞', 'ε=0.5'."""
  return "\u03b5=" + epsilon_token(eps).replace("inf", "\u221e")


def epsilon_token(eps: float) -> str:
  """File-name safe form: '2', '8', 'inf', '0.5'."""
  if math.isinf(eps):
    return "inf"
  return f"{eps:g}"


def method_sort_key(method: str):
  return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def dataset_sort_key(dataset: str):
  return ((DATASET_ORDER.index(dataset), "") if dataset in DATASET_ORDER
          else (len(DATASET_ORDER), dataset))


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass
class RunRecord:
  """One simulation run.

  Attributes:
    run_dir: the directory holding summary.json.
    summary: the parsed summary.json.
    metrics: metrics.csv as column name -> 1-D array (float64 for numeric columns, with
      NaN for empty / 'nan' cells; str for the others). Empty if there is no metrics.csv.
  """
  run_dir: str
  summary: dict
  metrics: dict = dataclasses.field(default_factory=dict)

  @property
  def method(self) -> str:
    return str(self.summary.get("method", ""))

  @property
  def dataset(self) -> str:
    return str(self.summary.get("dataset", ""))

  @property
  def epsilon(self) -> float:
    return parse_epsilon(self.summary.get("epsilon_target"))

  @property
  def num_clusters(self) -> int:
    n = self.summary.get("num_clusters")
    if n is not None:
      return int(n)
    return len([k for k in self.metrics if k.startswith("w_") and k[2:].isdigit()])

  def scalar(self, key: str) -> float:
    """A summary value as float; NaN when absent, null or not a number."""
    return _to_float(self.summary.get(key))

  def stage_rows(self, stage: int = STAGE_TRAIN) -> dict:
    """metrics restricted to one stage, sorted by round (empty dict if no rows)."""
    if "stage" not in self.metrics or not len(self.metrics["stage"]):
      return {}
    keep = self.metrics["stage"] == stage
    if not keep.any():
      return {}
    out = {k: v[keep] for k, v in self.metrics.items()}
    if "round" in out:
      order = np.argsort(out["round"], kind="stable")
      out = {k: v[order] for k, v in out.items()}
    return out


def _to_float(value: Any) -> float:
  if value is None or isinstance(value, bool):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def read_metrics_csv(path: str) -> dict:
  """metrics.csv -> {column: np.ndarray}; numeric columns float64 (NaN for '', 'nan')."""
  with open(path, newline="") as f:
    reader = csv.reader(f)
    try:
      header = next(reader)
    except StopIteration:
      return {}
    rows = [r for r in reader if r]
  for i, r in enumerate(rows):
    if len(r) != len(header):
      raise errors.DataError(
          f"{path}: expected {len(header)} cells per row (header), found {len(r)} on "
          f"data row {i + 1}.")
  out = {}
  for j, name in enumerate(header):
    cells = [r[j] for r in rows]
    try:
      out[name] = np.array([float(c) if c.strip() else math.nan for c in cells],
                           dtype=np.float64)
    except ValueError:
      out[name] = np.array(cells, dtype=str)
  return out


def load_run(run_dir: str) -> RunRecord:
  """Read `<run_dir>/summary.json` and, if present, `<run_dir>/metrics.csv`."""
  summary_path = os.path.join(run_dir, "summary.json")
  try:
    with open(summary_path) as f:
      summary = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.DataError(f"{summary_path}: expected a readable JSON summary, found: {e}")
  if not isinstance(summary, dict) or "method" not in summary or "dataset" not in summary:
    raise errors.DataError(
        f"{summary_path}: expected a JSON object with at least 'method' and 'dataset', "
        f"found keys {sorted(summary) if isinstance(summary, dict) else type(summary).__name__}.")
  metrics_path = os.path.join(run_dir, "metrics.csv")
  metrics = read_metrics_csv(metrics_path) if os.path.exists(metrics_path) else {}
  return RunRecord(run_dir=run_dir, summary=summary, metrics=metrics)


def collect_runs(grid_dir: str) -> list:
  """Every run below `grid_dir` (each directory holding a summary.json, any depth).

  Sorted by dataset, method (canonical order), epsilon, then path. Directories named
  `*.tmp-<pid>` (unfinished jobs) are skipped. Raises DataError if grid_dir is not a
  directory; returns [] if it holds no run.
  """
  if not os.path.isdir(grid_dir):
    raise errors.DataError(f"grid directory {grid_dir!r}: expected a directory, found none.")
  records = []
  for root, dirs, files in os.walk(grid_dir):
    dirs[:] = sorted(d for d in dirs if ".tmp-" not in d)
    if "summary.json" in files:
      records.append(load_run(root))
      dirs[:] = []  # a run's own subdirectories (checkpoints, tensorboard) hold no runs
  records.sort(key=lambda r: (dataset_sort_key(r.dataset), method_sort_key(r.method),
                              r.epsilon, r.run_dir))
  return records


def select(records: Iterable[RunRecord], dataset: str | None = None,
           epsilon: float | str | None = None, method: str | None = None) -> list:
  """Records matching the given dataset / epsilon ('inf' allowed) / method."""
  eps = None if epsilon is None else parse_epsilon(epsilon)
  return [r for r in records
          if (dataset is None or r.dataset == dataset)
          and (method is None or r.method == method)
          and (eps is None or r.epsilon == eps)]


def grid_columns(records: Iterable[RunRecord]) -> list:
  """(dataset, epsilon) pairs present, datasets in canonical order, ε ascending, ∞ last."""
  cols = {(r.dataset, r.epsilon) for r in records}
  return sorted(cols, key=lambda c: (dataset_sort_key(c[0]), c[1]))


# ----------------------------------------------------------------------------- tables

def _cell_values(records: Sequence[RunRecord], key: str) -> dict:
  """{(method, dataset, eps): [finite values in %]} over all runs."""
  out = {}
  for r in records:
    v = r.scalar(key)
    if math.isfinite(v):
      out.setdefault((r.method, r.dataset, r.epsilon), []).append(100.0 * v)
  return out


def _table(records, key, methods, columns) -> list:
  values = _cell_values(records, key)
  shown = {}  # (method, col) -> (rounded mean, text)
  for m in methods:
    for col in columns:
      vs = values.get((m,) + col)
      if not vs:
        continue
      mean = round(float(np.mean(vs)), 1)
      text = f"{mean:.1f}"
      if len(vs) > 1:
        text += f" \u00b1 {float(np.std(vs)):.1f} (n={len(vs)})"
      shown[(m, col)] = (mean, text)
  best = {}
  for col in columns:
    vals = [shown[(m, col)][0] for m in methods if (m, col) in shown]
    if vals:
      best[col] = max(vals)
  lines = []
  for m in methods:
    cells = []
    for col in columns:
      if (m, col) not in shown:
        cells.append(MISSING)
        continue
      mean, text = shown[(m, col)]
      cells.append(f"**{text}**" if mean == best[col] else text)
    lines.append(f"| {method_name(m)} | " + " | ".join(cells) + " |")
  return lines


def _fmt(v: float, spec: str = ".3g") -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "n/a"
  if isinstance(v, float) and math.isinf(v):
    return "\u221e"
  return format(v, spec)


def _footnote(records, col, methods) -> str:
  dataset, eps = col
  parts = []
  for m in methods:
    for r in select(records, dataset=dataset, epsilon=eps, method=m):
      z = r.summary.get("noise_multipliers") or {}
      zs = ", ".join(f"{k}={_fmt(_to_float(z[k]))}" for k in sorted(z))
      bits = [f"\u03b5 achieved {_fmt(r.scalar('epsilon_achieved'))}"]
      if math.isfinite(r.scalar("delta")):
        bits.append(f"\u03b4={_fmt(r.scalar('delta'))}")
      if zs:
        bits.append(zs)
      if math.isfinite(r.scalar("local_epsilon1")):
        bits.append(f"local \u03b51={_fmt(r.scalar('local_epsilon1'))}")
      parts.append(f"{method_name(m)}: " + ", ".join(bits))
  return f"{dataset_name(dataset)}, {format_epsilon(eps)}: " + "; ".join(parts) + "."


def results_markdown(records: Sequence[RunRecord], date: str | None = None) -> str:
  """The Markdown text `write_results_table` writes (see there)."""
  records = list(records)
  date = date or datetime.date.today().isoformat()
  methods = sorted({r.method for r in records} | set(METHOD_ORDER), key=method_sort_key)
  columns = grid_columns(records)
  head = ["Method"] + [f"{dataset_name(d)} {format_epsilon(e)} [^{i + 1}]"
                       for i, (d, e) in enumerate(columns)]
  header = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(columns)]
  out = [f"# Results ({date})", "",
         f"{len(records)} runs. Cells: mean over runs of the final value, in %; best per "
         f"column in **bold** (ties all bold); {MISSING} = no run.", "",
         "## Final test accuracy (%)", ""]
  out += header + _table(records, "final_accuracy", methods, columns)
  out += ["", "## Clustering accuracy (%)", ""]
  out += header + _table(records, "clustering_accuracy", methods, columns)
  out += ["", "Achieved privacy and noise multipliers per column:", ""]
  out += [f"[^{i + 1}]: {_footnote(records, col, methods)}" for i, col in enumerate(columns)]
  return "\n".join(out) + "\n"


RESULTS_CSV_FIRST = ("run_dir", "dataset", "method", "epsilon_target", "epsilon_achieved",
                     "delta", "z0", "z1", "z2", "local_epsilon1", "rounds", "rounds.stage0",
                     "rounds.stage2", "final_accuracy",
                     "clustering_accuracy", "init_clustering_accuracy", "wall_clock_s",
                     "num_clusters")


def _flat_row(r: RunRecord) -> dict:
  row = {"run_dir": r.run_dir}
  for k, v in r.summary.items():
    if k == "noise_multipliers" and isinstance(v, Mapping):
      row.update({str(zk): zv for zk, zv in v.items()})
    elif isinstance(v, Mapping):  # config, rounds {stage0, stage2}, privacy, ...
      for ck, cv in _flatten(v, f"{k}."):
        row[ck] = cv
    elif isinstance(v, (list, tuple)):
      row[k] = json.dumps(v, sort_keys=True)
    else:
      row[k] = v
  row["epsilon_target"] = epsilon_token(r.epsilon)
  return {k: ("" if v is None else v) for k, v in row.items()}


def _flatten(d: Mapping, prefix: str):
  for k, v in d.items():
    if isinstance(v, Mapping):
      yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(v, (list, tuple)):
      yield f"{prefix}{k}", json.dumps(v)
    else:
      yield f"{prefix}{k}", v


def _atomic_write(path: str, text: str) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def results_csv_text(records: Sequence[RunRecord]) -> str:
  """CSV text, one row per run: every summary scalar, noise multipliers as z0/z1/z2,
  nested objects flattened as `<key>.<subkey>` (config.*, rounds.stage0, privacy.*),
  lists as JSON; missing values empty."""
  rows = [_flat_row(r) for r in records]
  present = {k for row in rows for k in row}
  cols = [k for k in RESULTS_CSV_FIRST if k in present or "." not in k]
  extra = sorted(present - set(cols))
  cols += [k for k in extra if not k.startswith("config.")] + [k for k in extra
                                                              if k.startswith("config.")]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def write_results_table(records: Sequence[RunRecord], out_md: str, out_csv: str,
                        date: str | None = None) -> str:
  """Write the Table-1 style grid to `out_md` and one row per run to `out_csv`.

  Markdown: a dated header, then two tables (final test accuracy, clustering accuracy),
  rows = methods in canonical order (all seven, plus any other found), columns =
  dataset × ε (ε ascending, ∞ last); cells in % with one decimal, mean ± std (n) where a
  cell has several runs; the best per column in bold (ties on the shown value all bold);
  missing cells '—'. Footnotes per column give, per method, the achieved ε, δ, the noise
  multipliers z0/z1/z2 and local ε1. Both files are written atomically.
  Returns the Markdown text.
  """
  records = list(records)
  md = results_markdown(records, date=date)
  _atomic_write(out_md, md)
  _atomic_write(out_csv, results_csv_text(records))
  return md
