"""Mutation testing for the core modules: plant one-line bugs, run a fast test subset.

  PYTHONPATH=$PWD nice -n 10 .venv/bin/python scripts/mutate.py --set=issue
  PYTHONPATH=$PWD nice -n 10 .venv/bin/python scripts/mutate.py --set=sample --count=25

Not part of CI. Works on a private copy of the repository (tracked files plus untracked,
non-ignored ones), never on the checkout itself. Per mutant: write the mutated module,
run the tests mapped to it (`TESTS`, pytest -x, with a timeout), restore the module.
A mutant is *killed* when the tests fail (exit 1), *survived* when they pass (exit 0),
and *timeout*/*error* otherwise (reported separately, not counted as killed).

Sets:
  issue   the 17 bugs of issue 14's table, written as explicit (old -> new) edits;
  sample  `--count` mutants drawn with `--seed` from every mutable AST node of the
          `SAMPLE_FILES` (operator swaps + - * /, comparison swaps < <= > >= == !=,
          numeric constant changes, True <-> False, sign flips (drop a unary minus),
          dropped terms (a op b -> a)); docstrings, raise statements, error messages and
          asserts, default argument values and dataclass field defaults are not
          mutated. A module is re-rendered with ast.unparse, so a
          mutant that leaves the rendering unchanged is skipped.
Writes a Markdown table to --report (default: stdout only).
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test subset per module: fast tests (each file's run well under a minute on 2 cores).
TESTS = {
    "computations/learning/methods.py": ["tests/computations/test_methods.py",
                                "tests/computations/test_privacy_wiring.py",
                                "tests/training/test_local_reference.py"],
    "computations/learning/finalizers.py": ["tests/computations/test_finalizers.py"],
    "computations/learning/aggregators.py": ["tests/computations/test_aggregators.py"],
    "computations/learning/stage1.py": ["tests/computations/test_stage1_noise.py"],
    "computations/learning/client_work.py": ["tests/computations/test_fedavg_equivalence.py",
                                    "tests/computations/test_round_loop.py",
                                    "tests/computations/test_packed_diagnostics.py"],
    "pina_tff/privacy/norm_bound.py": ["tests/privacy/test_norm_bound.py",
                                       "tests/training/test_precision.py"],
    "computations/learning/learning_process.py": ["tests/computations/test_fedavg_equivalence.py",
                                         "tests/computations/test_finalizers.py"],
    "pina_tff/privacy/accounting.py": ["tests/computations/test_privacy_wiring.py",
                                       "tests/privacy/test_accounting.py"],
    "pina_tff/privacy/sketch.py": ["tests/privacy/test_sketch.py",
                                   "tests/computations/test_stage1_noise.py"],
    "pina_tff/aggregation/scaling.py": ["tests/aggregation/test_scaling.py",
                                        "tests/computations/test_finalizers.py"],
    "pina_tff/aggregation/normality.py": ["tests/aggregation/test_normality.py"],
    "pina_tff/training/local.py": ["tests/training"],
    "pina_tff/training/shards.py": ["tests/training"],
    "pina_tff/training/models.py": ["tests/training"],
    "pina_tff/clustering/metrics.py": ["tests/clustering/test_metrics.py"],
    "pina_tff/method_table.py": ["tests/test_method_table.py",
                                 "tests/computations/test_methods.py",
                                 "tests/computations/test_privacy_wiring.py"],
    "computations/program/round_loop.py": ["tests/computations/test_round_loop.py"],
    "computations/data/round_data.py": ["tests/computations/test_round_loop.py",
                                   "tests/computations/test_resident_data.py"],
    "computations/learning/seeded_process.py": ["tests/computations/test_aggregators.py"],
    "computations/learning/mergeable_ddp.py": ["tests/computations/test_workers.py",
                                      "tests/privacy/test_seeded_ddp.py"],
    "computations/learning/seeded_ddp.py": ["tests/privacy/test_seeded_ddp.py",
                                   "tests/computations/test_type_signatures.py"],
    "pina_tff/privacy/discrete_gaussian.py": ["tests/privacy/test_discrete_gaussian.py"],
    "computations/program/summary.py": ["tests/privacy/test_program_privacy.py",
                                "tests/computations/test_program.py"],
    "computations/program/release.py": ["tests/computations/test_program.py",
                                        "tests/computations/test_release.py",
                                        "tests/computations/test_program_logic.py"],
    "computations/program/program_state.py": ["tests/computations/test_program_logic.py",
                                              "tests/computations/test_program.py"],
    "computations/program/logic.py": ["tests/computations/test_program_logic.py",
                                      "tests/computations/test_program.py"],
    # not in SAMPLE_FILES (1-2 minutes per mutant); sample it with --files
    "computations/program/program.py": ["tests/computations/test_program.py",
                                "tests/privacy/test_program_privacy.py"],
}
PROGRAM_TESTS = ["tests/computations/test_program.py"]

SAMPLE_FILES = [
    "computations/learning/methods.py", "computations/learning/finalizers.py", "computations/learning/aggregators.py",
    "computations/learning/stage1.py", "computations/learning/client_work.py",
    "computations/learning/learning_process.py", "pina_tff/privacy/accounting.py",
    "pina_tff/privacy/sketch.py", "pina_tff/aggregation/scaling.py",
    "pina_tff/aggregation/normality.py", "pina_tff/training/local.py",
    # added with issue 12's refactor (the round loop, the method table, DDP by worker)
    "pina_tff/method_table.py", "computations/program/round_loop.py", "computations/data/round_data.py",
    "computations/learning/seeded_process.py", "computations/learning/mergeable_ddp.py",
    "computations/program/summary.py", "computations/program/release.py",
    # issue 19 item 5 (the seeded distributed DP)
    "computations/learning/seeded_ddp.py", "pina_tff/privacy/discrete_gaussian.py",
]

# (id, description, file, old, new[, tests]) -- the bugs of issue 14's table.
ISSUE = [
    ("I01", "Shapiro-Wilk scaling uses W instead of 1-W", "pina_tff/aggregation/scaling.py",
     "d = tf.maximum(1.0 - w, tf.zeros_like(w))", "d = tf.maximum(w, tf.zeros_like(w))"),
    ("I02", "Hungarian matching minimises", "pina_tff/clustering/metrics.py",
     "linear_sum_assignment(-counts)", "linear_sum_assignment(counts)"),
    ("I03", "top-k keeps only positive entries", "pina_tff/privacy/sketch.py",
     "tf.logical_or(pos_mask, neg_mask)", "pos_mask"),
    ("I04", "no division by the cohort in the aggregator", "computations/learning/aggregators.py",
     "lambda v: v / tf.cast(denominator, v.dtype)", "lambda v: v"),
    ("I05", "central noise scaled by S*clip", "computations/learning/aggregators.py",
     "SeededGaussianSumFactory(shard_clip, spec.noise_multiplier * spec.clip_norm)",
     "SeededGaussianSumFactory(shard_clip, spec.noise_multiplier * shard_clip)"),
    ("I06", "a resumed run skips a round", "computations/program/logic.py",
     "loop.run_rounds(stage, state, self.state.round + 1, self.data,\n"
     "                              self.round_hooks(stages.STAGE2",
     "loop.run_rounds(stage, state, self.state.round + 2, self.data,\n"
     "                              self.round_hooks(stages.STAGE2",
     PROGRAM_TESTS + ["-k", "interrupted"]),
    ("I07", "stage-1 sketches sent with no noise", "computations/learning/stage1.py",
     "sketch=clipped + noise,", "sketch=clipped,"),
    ("I08", "stage 0 calibrated with stage 2's noise multiplier", "computations/program/logic.py",
     "methods.stage0_spec(p.cfg, z0=p.report.z0,", "methods.stage0_spec(p.cfg, z0=p.report.z2,",
     PROGRAM_TESTS + ["-k", "calibrated_noise"]),
    ("I09", "IFCA+LDP accounted with sampling amplification",
     "pina_tff/privacy/accounting.py",
     "stage2_local_dp=method.local_noise,", "stage2_local_dp=False,"),
    ("I10", "no clipping for FedNova", "computations/learning/methods.py",
     "batch_size=s2.batch_size, learning_rate=s2.client_lr, clip_norm=s2.clip,",
     "batch_size=s2.batch_size, learning_rate=s2.client_lr, "
     "clip_norm=math.inf if method.step_normalized else s2.clip,"),
    ("I11", "FedNova multiplies the update by the step count", "pina_tff/training/local.py",
     "delta = delta / tf.maximum(steps, 1.0)[:, None]",
     "delta = delta * tf.maximum(steps, 1.0)[:, None]"),
    ("I12", "FedNova's server multiplier dropped", "computations/learning/methods.py",
     "update_multiplier=expected_local_steps if method.step_normalized else 1.0,",
     "update_multiplier=1.0,"),
    ("I13", "FedProx proximal term with the wrong sign", "pina_tff/training/local.py",
     "loss = loss + 0.5 * spec.fedprox_mu * prox * has_data",
     "loss = loss - 0.5 * spec.fedprox_mu * prox * has_data"),
    ("I14", "the method table divides by the number of shards", "computations/learning/methods.py",
     "clip_norm=s2.clip, expected_clients=s2.cohort,",
     "clip_norm=s2.clip, expected_clients=_shards_for_expected_cohort(s2.cohort, "
     "shard_size),"),
    ("I15", "normality scaling computed but not applied", "computations/learning/finalizers.py",
     "+ scaled * multiplier", "+ update * multiplier"),
    ("I16", "the finalizer's round counter reset to 0 on resume", "computations/program/logic.py",
     "fin.finalizer_state(self.state.round,", "fin.finalizer_state(0,",
     PROGRAM_TESTS + ["-k", "interrupted"]),
    ("I17", "evaluation picks the highest-loss cluster", "pina_tff/training/local.py",
     "select[\"mask\"])\n    choice = tf.argmin(", "select[\"mask\"])\n    choice = tf.argmax("),
]


# --------------------------------------------------------------------------- AST sample
class _Collector(ast.NodeVisitor):
  """Lists (node path, kind, replacement factory) for every mutable node."""

  def __init__(self):
    self.sites = []
    self._skip = 0

  def _skipping(self, node):
    self._skip += 1
    self.generic_visit(node)
    self._skip -= 1

  visit_Raise = visit_Assert = visit_JoinedStr = _skipping

  def visit_Expr(self, node):  # docstrings and bare calls like log(...)
    if isinstance(node.value, ast.Constant):
      return
    self.generic_visit(node)

  def visit_arguments(self, node):  # default values: keep
    return

  def visit_AnnAssign(self, node):  # dataclass field defaults: configuration, keep
    return

  def visit_BinOp(self, node):
    if not self._skip:
      swap = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Mult, ast.Pow: ast.Mult}
      if type(node.op) in swap:
        self.sites.append((node, "operator swap", lambda n, s=swap: ast.BinOp(
            n.left, s[type(n.op)](), n.right)))
      if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        self.sites.append((node, "dropped term", lambda n: n.left))
    self.generic_visit(node)

  def visit_Compare(self, node):
    if not self._skip and len(node.ops) == 1:
      swap = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
              ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
      if type(node.ops[0]) in swap:
        self.sites.append((node, "comparison swap", lambda n, s=swap: ast.Compare(
            n.left, [s[type(n.ops[0])]()], n.comparators)))
    self.generic_visit(node)

  def visit_UnaryOp(self, node):
    if not self._skip and isinstance(node.op, ast.USub):
      self.sites.append((node, "sign flip", lambda n: n.operand))
    self.generic_visit(node)

  def visit_Constant(self, node):
    if self._skip or isinstance(node.value, str) or node.value is None:
      return
    v = node.value
    if isinstance(v, bool):
      self.sites.append((node, "constant change", lambda n: ast.Constant(not n.value)))
    elif isinstance(v, int):
      self.sites.append((node, "constant change", lambda n: ast.Constant(n.value + 1)))
    elif isinstance(v, float):
      self.sites.append((node, "constant change", lambda n: ast.Constant(
          n.value * 2.0 if n.value else 1.0)))


def _replace(tree, target, new):
  class T(ast.NodeTransformer):
    def generic_visit(self, node):
      if node is target:
        return ast.copy_location(new, node)
      return super().generic_visit(node)
  return ast.fix_missing_locations(T().visit(tree))


def sample_mutants(count: int, seed: int, files=None):
  """`count` distinct mutants (id, description, file, full new source, tests) drawn
  from `files` (default `SAMPLE_FILES`; each must have an entry in `TESTS`)."""
  sites = []
  for path in files or SAMPLE_FILES:
    src = open(os.path.join(ROOT, path)).read()
    tree = ast.parse(src)
    base = ast.unparse(tree)
    col = _Collector()
    col.visit(tree)
    for i, (node, kind, make) in enumerate(col.sites):
      sites.append((path, src, base, i, node.lineno, kind))
  rng = random.Random(seed)
  rng.shuffle(sites)
  out = []
  for path, src, base, i, line, kind in sites:
    if len(out) >= count:
      break
    tree = ast.parse(src)
    col = _Collector()
    col.visit(tree)
    node, _, make = col.sites[i]
    original_line = src.splitlines()[line - 1].strip()
    mutated = ast.unparse(_replace(tree, node, make(copy.deepcopy(node))))
    if mutated == base:
      continue
    new_expr = ast.unparse(make(copy.deepcopy(node)))
    out.append((f"S{len(out) + 1:02d}",
                f"{kind} at line {line}: `{ast.unparse(node)}` -> `{new_expr}` "
                f"(in `{original_line[:70]}`)", path, mutated, TESTS[path]))
  return out


# --------------------------------------------------------------------------- running
def _copy_repo(dest: str) -> None:
  files = subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
      check=True, capture_output=True, text=True).stdout.split("\n")
  for f in filter(None, files):
    src = os.path.join(ROOT, f)
    if not os.path.isfile(src):
      continue
    os.makedirs(os.path.dirname(os.path.join(dest, f)) or dest, exist_ok=True)
    shutil.copy2(src, os.path.join(dest, f))


def run_mutant(work: str, path: str, new_source: str, tests, timeout: int):
  target = os.path.join(work, path)
  original = open(target).read()
  try:
    with open(target, "w") as f:
      f.write(new_source)
    env = dict(os.environ, PYTHONPATH=work, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           *tests]
    start = time.monotonic()
    try:
      proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                            timeout=timeout, start_new_session=True)
      rc = proc.returncode
      tail = (proc.stdout + proc.stderr).strip().splitlines()
    except subprocess.TimeoutExpired:
      rc, tail = None, ["timeout"]
    elapsed = time.monotonic() - start
  finally:
    with open(target, "w") as f:
      f.write(original)
  if rc == 1:
    status = "killed"
  elif rc == 0:
    status = "survived"
  elif rc is None:
    status = "timeout"
  else:
    status = f"error (rc {rc})"
  failed = next((l for l in tail if l.startswith(("FAILED", "ERROR"))), "")
  return status, elapsed, failed.replace("FAILED ", "")[:90]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--set", choices=["issue", "sample"], default="issue")
  ap.add_argument("--count", type=int, default=25)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--timeout", type=int, default=240)
  ap.add_argument("--only", default="", help="comma-separated mutant ids")
  ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
  ap.add_argument("--report", default="", help="append the Markdown table here")
  ap.add_argument("--files", default="",
                  help="comma-separated modules to sample from instead of SAMPLE_FILES "
                       "(each needs a TESTS entry), e.g. computations/program/program.py")
  args = ap.parse_args(argv)
  files = [f.strip() for f in args.files.split(",") if f.strip()]
  unknown = [f for f in files if f not in TESTS]
  if unknown:
    print(f"error: --files: no test subset is mapped to {unknown} (see TESTS)",
          file=sys.stderr)
    return 2

  mutants = []
  if args.set == "issue":
    for entry in ISSUE:
      mid, desc, path, old, new = entry[:5]
      tests = entry[5] if len(entry) > 5 else TESTS[path]
      src = open(os.path.join(ROOT, path)).read()
      if src.count(old) != 1:
        print(f"error: {mid}: the edit matches {src.count(old)} times in {path}",
              file=sys.stderr)
        return 2
      mutants.append((mid, desc, path, src.replace(old, new), tests))
  else:
    mutants = sample_mutants(args.count, args.seed, files)
  if args.only:
    keep = set(args.only.split(","))
    mutants = [m for m in mutants if m[0] in keep]
  if args.list:
    for mid, desc, path, _, tests in mutants:
      print(f"{mid} {path}: {desc} | {' '.join(tests)}")
    return 0

  rows = []
  with tempfile.TemporaryDirectory(prefix="pina-mutate-") as work:
    _copy_repo(work)
    for mid, desc, path, source, tests in mutants:
      status, elapsed, failed = run_mutant(work, path, source, tests, args.timeout)
      rows.append((mid, path, desc, status, elapsed, failed))
      print(f"{mid} {status:9s} {elapsed:6.1f}s {path}: {desc} {failed}", flush=True)
  killed = sum(r[3] == "killed" for r in rows)
  lines = [f"### `--set={args.set}`" + (f" `--count={args.count} --seed={args.seed}`"
                                         + (f" `--files={args.files}`" if files else "")
                                         if args.set == "sample" else ""),
           "", f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; killed "
           f"{killed}/{len(rows)}", "",
           "| id | module | mutant | result | s | first failing test |",
           "|---|---|---|---|---|---|"]
  for mid, path, desc, status, elapsed, failed in rows:
    lines.append(f"| {mid} | {path} | {desc.replace('|', '/')} | {status} | "
                 f"{elapsed:.0f} | {failed.replace('|', '/')} |")
  table = "\n".join(lines) + "\n"
  print(table)
  if args.report:
    with open(args.report, "a") as f:
      f.write("\n" + table)
  return 0 if killed == len(rows) else 1


if __name__ == "__main__":
  raise SystemExit(main())
