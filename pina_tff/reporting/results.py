"""Read simulation run directories and write the Table-1 style results grid.

A run directory (written by `computations/program/program.py`) holds
  summary.json  run-level scalars (method, dataset, epsilon_target, final_accuracy, ...)
  metrics.csv   one row per round (stage, round, method, test_accuracy, ...,
                count_c, norm_c, w_c, scale_c for each cluster c)
`collect_runs` finds every summary.json below a grid directory (any layout: pina-grid's
`<dataset>/<method>/eps_<e>/seed_<s>/` or the older `<dataset>/<method>/eps_<e>/`) and
returns one `RunRecord` per run. Accuracies are fractions in [0, 1]; tables show them in
%. Several runs of one cell (seeds) are shown as mean ± sample std (ddof = 1) and their
count. Plain csv/json/NumPy: no pandas.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pina_tff import config
from pina_tff import errors
from pina_tff.runtime import atomic
from pina_tff import method_table
from pina_tff import stages

METHOD_ORDER = method_table.METHOD_KEYS
METHOD_NAMES = {k: m.name for k, m in method_table.METHODS.items()}
DATASET_ORDER = ("cifar10", "fashion_mnist", "femnist", "digits")
DATASET_NAMES = {
    "cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST", "femnist": "FEMNIST",
    "digits": "Digits",
}
MISSING = "\u2014"  # em dash for an absent cell
#: The baselines among which pina-grid picks the one that gets extra seeds: every
#: method that is neither PINA (or its ablation PINA+RI: the methods with PINA's
#: scaling) nor a ceiling, in the method table's order.
BASELINES = method_table.keys_where(pina_scaling=False, true_clusters=False)
CLUSTERED_METHODS = method_table.keys_where(clustered=True)
#: Ceilings (true clusters known): shown above the methods, never the column's best.
CEILING_METHODS = method_table.keys_where(true_clusters=True)
#: summary.json field of a ceiling's accuracy with the loss-based choice.
CHOICE_ACCURACY = "accuracy_with_loss_based_choice"
SEED_DIR = re.compile(r"^seed_(\d+)$")


# ----------------------------------------------------------------------------- names

#: The condition the release ε needs (docs/privacy.md, "Two threat models").
RELEASE_CONDITION = (
    "The release \u03b5 holds only if the cohort schedule is secret: these runs draw it "
    "from the run's seed, which config.json and summary.json record, so against anyone "
    "who reads them the release \u03b5 is the server \u03b5.")


def method_name(method: str) -> str:
  """Display name of a method key ('pina_ri' -> 'PINA+RI'); unknown keys unchanged."""
  return METHOD_NAMES.get(method, method)


def dataset_name(dataset: str) -> str:
  """Display name of a dataset key ('cifar10' -> 'CIFAR-10'); unknown keys unchanged."""
  return DATASET_NAMES.get(dataset, dataset)


def parse_epsilon(value: Any) -> float:
  """epsilon_target as a float: 2 -> 2.0, 'inf' / 'Infinity' / '∞' / None -> inf."""
  if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
    return math.inf
  return float(config.parse_epsilon(value, "epsilon_target"))


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

  @property
  def seed(self):
    """The run's seed: summary 'seed', else config.seed, else a `seed_<s>` directory
    name; None if none of these is there."""
    for v in (self.summary.get("seed"), (self.summary.get("config") or {}).get("seed")):
      if v is not None and not isinstance(v, bool):
        try:
          return int(v)
        except (TypeError, ValueError):
          pass
    m = SEED_DIR.match(os.path.basename(os.path.normpath(self.run_dir)))
    return int(m.group(1)) if m else None

  def privacy_epsilons(self) -> tuple:
    """(ε server, ε release) achieved, floats (inf for ∞, NaN when unknown).

    Reads `epsilon_server` / `epsilon_release` at the top of summary.json, then inside
    its `privacy` dict (also `privacy.epsilons.{server,release}`); a summary without
    them (older runs) gives (epsilon_achieved, NaN).
    """
    priv = self.summary.get("privacy") if isinstance(self.summary.get("privacy"),
                                                      Mapping) else {}
    eps = priv.get("epsilons") if isinstance(priv.get("epsilons"), Mapping) else {}
    out = []
    for name in ("server", "release"):
      v = self.summary.get(f"epsilon_{name}", priv.get(f"epsilon_{name}", eps.get(name)))
      out.append(_to_eps(v))
    if math.isnan(out[0]) and math.isnan(out[1]):
      out[0] = _to_eps(self.summary.get("epsilon_achieved"))
    return tuple(out)

  def scalar(self, key: str) -> float:
    """A summary value as float; NaN when absent, null or not a number."""
    return _to_float(self.summary.get(key))

  def stage_rows(self, stage: int = stages.STAGE2) -> dict:
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


def _to_eps(value: Any) -> float:
  """An achieved ε from JSON: number, 'inf' -> inf; None / other -> NaN."""
  if isinstance(value, str) and value.strip().lower() in config.INFINITY_SPELLINGS:
    return math.inf
  return _to_float(value)


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
  `*.tmp-<pid>` (unfinished jobs) are skipped. Below a run directory only `seed_<s>`
  subdirectories are searched (an old-layout run with seed runs added below it). Raises DataError if grid_dir is not a
  directory; returns [] if it holds no run.
  """
  if not os.path.isdir(grid_dir):
    raise errors.DataError(f"grid directory {grid_dir!r}: expected a directory, found none.")
  records = []
  for root, dirs, files in os.walk(grid_dir):
    dirs[:] = sorted(d for d in dirs if ".tmp-" not in d)
    if "summary.json" in files:
      records.append(load_run(root))
      # A run's own subdirectories (checkpoints, tensorboard) hold no runs.
      dirs[:] = [d for d in dirs if SEED_DIR.match(d)]
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

def mean_std(values: Sequence[float]) -> tuple:
  """(mean, sample standard deviation (ddof = 1; 0.0 for one value), n) of `values`."""
  a = np.asarray(list(values), dtype=np.float64)
  if not len(a):
    raise ValueError("mean_std: expected at least one value, found none")
  return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else 0.0), len(a)


def format_mean_std(values: Sequence[float], decimals: int = 1) -> str:
  """'74.1' for one value, '74.1 ± 0.6 (3)' (mean ± sample std (n)) for several."""
  mean, std, n = mean_std(values)
  text = f"{mean:.{decimals}f}"
  if n > 1:
    text += f" \u00b1 {std:.{decimals}f} ({n})"
  return text


def best_baseline(records: Iterable[RunRecord], dataset: str | None, epsilon,
                  seed: int | None = None, baselines: Sequence[str] = BASELINES):
  """The baseline that pina-grid gives extra seeds: among the finished runs of
  (dataset, ε) of the methods in `baselines` (FedAvg, FedProx, FedNova, IFCA, IFCA+LDP)
  with the given seed (any seed if None), the method with the highest final test
  accuracy (summary `final_accuracy`; runs without a finite one are ignored); a tie goes
  to the method listed first in `baselines`. None when no such run exists. dataset None:
  any dataset (the records are already one dataset's).
  """
  best, best_acc = None, -math.inf
  for m in baselines:
    for r in select(records, dataset=dataset, epsilon=epsilon, method=m):
      acc = r.scalar("final_accuracy")
      if (seed is None or r.seed == seed) and math.isfinite(acc) and acc > best_acc:
        best, best_acc = m, acc
  return best


def _cell_values(records: Sequence[RunRecord], key: str) -> dict:
  """{(method, dataset, eps): [finite values in %]} over all runs."""
  out = {}
  for r in records:
    v = r.scalar(key)
    if math.isfinite(v):
      out.setdefault((r.method, r.dataset, r.epsilon), []).append(100.0 * v)
  return out


def _table(records, key, methods, columns, extra_rows=()) -> list:
  """Table rows: mean ± std (n) per method and column, best mean per column in bold
  (among the methods anyone can run: the oracle, a ceiling, is never bold).

  extra_rows: (label, method, key) rows shown after the methods, never bold.
  """
  values = _cell_values(records, key)
  shown = {}  # (method, col) -> (rounded mean, text)
  for m in methods:
    for col in columns:
      vs = values.get((m,) + col)
      if vs:
        shown[(m, col)] = (round(mean_std(vs)[0], 1), format_mean_std(vs))
  best = {}
  for col in columns:
    vals = [shown[(m, col)][0] for m in methods
            if (m, col) in shown and m not in CEILING_METHODS]
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
      cells.append(f"**{text}**" if mean == best.get(col) and m not in CEILING_METHODS
                   else text)
    lines.append(f"| {method_name(m)} | " + " | ".join(cells) + " |")
  for label, m, k in extra_rows:
    vals = _cell_values(select(records, method=m), k)
    cells = [format_mean_std(vals[(m,) + col]) if vals.get((m,) + col) else MISSING
             for col in columns]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


def _fmt(v: float, spec: str = ".3g") -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "n/a"
  if isinstance(v, float) and math.isinf(v):
    return "\u221e"
  return format(v, spec)


def _footnote(records, col, methods) -> str:
  """Per method: achieved ε (`epsilon_achieved`: under the threat model calibrated), δ,
  noise multipliers, local ε1 (distinct texts over seeds)."""
  dataset, eps = col
  parts = []
  for m in methods:
    texts = []
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
      text = ", ".join(bits)
      if text not in texts:
        texts.append(text)
    if texts:
      parts.append(f"{method_name(m)}: " + " | ".join(texts))
  return f"{dataset_name(dataset)}, {format_epsilon(eps)}: " + "; ".join(parts) + "."


def _epsilon_table(records, methods, columns, head) -> list:
  """Rows 'server / release' achieved ε per method and column (distinct values over
  seeds joined by ', ')."""
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(columns)]
  for m in methods:
    cells = []
    for d, e in columns:
      texts = []
      for r in select(records, dataset=d, epsilon=e, method=m):
        server, release = r.privacy_epsilons()
        t = f"{_fmt(server)} / {_fmt(release)}"
        if t not in texts:
          texts.append(t)
      cells.append(", ".join(texts) or MISSING)
    if any(c != MISSING for c in cells):
      lines.append(f"| {method_name(m)} | " + " | ".join(cells) + " |")
  return lines


def _calibrated_note(records) -> str:
  """' Noise calibrated to the <m> threat model.' from the summaries (if recorded)."""
  models = []
  for r in records:
    priv = r.summary.get("privacy") if isinstance(r.summary.get("privacy"), Mapping) else {}
    m = r.summary.get("threat_model_calibrated", priv.get("threat_model"))
    if m and m not in models:
      models.append(str(m))
  return f" Noise calibrated to the {' / '.join(models)} threat model." if models else ""


def _duration(seconds: float) -> str:
  s = int(round(seconds))
  return f"{seconds:.0f} s ({s // 3600} h {s % 3600 // 60:02d} min)"


def grid_section(grid_info: Mapping) -> list:
  """Markdown lines describing a pina-grid invocation history (grid.json, see
  pipelines/grid.py): commands, commit, dates, wall clock, seeds, best baselines."""
  runs = list(grid_info.get("invocations") or [])
  out = ["## Grid run", ""]
  if not runs:
    return out + ["No grid.json invocation recorded.", ""]
  total = sum(_to_float(i.get("wall_s")) for i in runs
              if math.isfinite(_to_float(i.get("wall_s"))))
  ran = sum(1 for i in runs for r in i.get("runs", []) if r.get("status") == "ran")
  out.append(f"- **Wall clock of the whole grid:** {_duration(total)}, over "
             f"{len(runs)} invocation(s) ({ran} runs executed; finished runs are skipped "
             f"on a restart).")
  out.append(f"- **Dates (UTC):** {runs[0].get('start', '?')} to "
             f"{runs[-1].get('end', '?')}.")
  commands = []
  for i in runs:
    c = i.get("command")
    if c and c not in commands:
      commands.append(c)
  out.append("- **Commands:** " + "; ".join(f"`{c}`" for c in commands))
  commits = []
  for i in runs:
    c = i.get("git_commit") or "unknown"
    if c not in commits:
      commits.append(c)
  out.append("- **Git commit:** " + ", ".join(f"`{c}`" for c in commits))
  last = runs[-1]
  if last.get("seeds") is not None:
    out.append(f"- **Seeds:** {', '.join(str(s) for s in last['seeds'])} for every cell.")
  extra = last.get("extra_seeds") or {}
  if extra.get("seeds"):
    picks = last.get("best_baselines") or {}
    picked = "; ".join(
        f"{dataset_name(d)} {format_epsilon(parse_epsilon(e))}: "
        f"{method_name(m) if m else 'none'}"
        for d, by_eps in picks.items() for e, m in by_eps.items())
    out.append(
        f"- **Extra seeds** {', '.join(str(s) for s in extra['seeds'])} at "
        f"{', '.join(format_epsilon(parse_epsilon(e)) for e in extra.get('epsilons', []))}"
        f" for PINA, PINA+RI and the best baseline. Best baseline rule: among FedAvg, "
        f"FedProx, FedNova, IFCA and IFCA+LDP, the highest final test accuracy of the "
        f"base-seed run (ties: that order). Picked: {picked or 'none'}.")
  return out + [""]


def split_label(records: Sequence[RunRecord]) -> str:
  """'validation' or 'test': the held-out split the runs scored (summary `eval_split`;
  runs written before the split existed scored test); 'held-out (val and test mixed)'
  when the runs disagree."""
  splits = {r.summary.get("eval_split", "test") for r in records}
  if splits == {"val"}:
    return "validation"
  if splits <= {"test"}:
    return "test"
  return "held-out (val and test mixed)"


def results_markdown(records: Sequence[RunRecord], date: str | None = None,
                     grid_info: Mapping | None = None) -> str:
  """The Markdown text `write_results_table` writes (see there)."""
  records = list(records)
  date = date or datetime.date.today().isoformat()
  methods = sorted({r.method for r in records} | set(METHOD_ORDER), key=method_sort_key)
  columns = grid_columns(records)
  head = ["Method"] + [f"{dataset_name(d)} {format_epsilon(e)} [^{i + 1}]"
                       for i, (d, e) in enumerate(columns)]
  header = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(columns)]
  out = [f"# Results ({date})", "",
         f"{len(records)} runs. Cells: final value in %, mean over seeds; with several "
         f"seeds `mean ± std (n)` (sample std, ddof = 1, n seeds); best mean per column "
         f"in **bold** (ties on the shown value all bold); {MISSING} = no run.", ""]
  if grid_info:
    out += grid_section(grid_info)
  out += [f"## Final {split_label(records)} accuracy (%)", ""]
  choice_rows = [(f"{method_name(m)}, scored by the loss-based choice", m,
                  CHOICE_ACCURACY) for m in CEILING_METHODS
                 if _cell_values(select(records, method=m), CHOICE_ACCURACY)]
  if choice_rows:
    out += ["The ceiling is scored with each client's true cluster's model; its last "
            "row scores the same models with the loss-based choice every method uses "
            f"(`{CHOICE_ACCURACY}`).", ""]
  out += header + _table(records, "final_accuracy", methods, columns,
                         extra_rows=choice_rows)
  clustered = [m for m in methods if m in CLUSTERED_METHODS
               or _cell_values(select(records, method=m), "clustering_accuracy")]
  out += ["", "## Clustering accuracy (%)", "",
          "Final stage-2 clustering accuracy of the clustered methods; the last row is "
          "PINA's stage-1 k-means accuracy on the sketched clients "
          "(`init_clustering_accuracy`).", ""]
  out += header + _table(records, "clustering_accuracy", clustered, columns,
                         extra_rows=[("PINA stage 1 (k-means)", "pina",
                                      "init_clustering_accuracy")])
  out += ["", "## Achieved \u03b5 (server / release)", "",
          "Every method in a column is calibrated to the column's target \u03b5; the "
          "achieved \u03b5 against an honest-but-curious server and against the released "
          "model (n/a: not recorded by this run's summary)." + _calibrated_note(records),
          "", RELEASE_CONDITION, ""]
  out += _epsilon_table(records, methods, columns, head)
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
  atomic.write_text(path, text, make_dirs=True)


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
                        date: str | None = None, grid_info: Mapping | None = None) -> str:
  """Write the Table-1 style grid to `out_md` and one row per run to `out_csv`.

  Markdown: a dated header; with `grid_info` (pina-grid's grid.json) the commands, git
  commit, dates and wall clock of the grid; then tables with columns = dataset × ε
  (ε ascending, ∞ last): final test accuracy (rows = methods in canonical order, all
  seven plus any other found), clustering accuracy (clustered methods, plus PINA's
  stage-1 k-means accuracy), achieved ε (server / release). Cells in % with one decimal,
  `mean ± std (n)` over seeds where a cell has several runs (sample std, ddof = 1); the
  best mean per column in bold (ties on the shown value all bold); missing cells '—'.
  Footnotes per column give, per method, the achieved ε, δ, the noise multipliers
  z0/z1/z2 and local ε1. Both files are written atomically.
  Returns the Markdown text.
  """
  records = list(records)
  md = results_markdown(records, date=date, grid_info=grid_info)
  _atomic_write(out_md, md)
  _atomic_write(out_csv, results_csv_text(records))
  return md


GRID_JSON = "grid.json"


def read_grid_info(grid_dir: str):
  """`<grid_dir>/grid.json` (written by pina-grid) as a dict, or None when absent."""
  path = os.path.join(grid_dir, GRID_JSON)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.DataError(f"{path}: expected pina-grid's JSON record, found: {e}")
  if not isinstance(info, dict):
    raise errors.DataError(f"{path}: expected a JSON object, found "
                           f"{type(info).__name__}.")
  return info
