"""Real `python -m pipelines.simulate` processes killed, interrupted and fed bad input.

The session's shared tiny digits population (`digits_clients_dir`, 24 clients, its
backbone and embeddings cache built once) is used by every test. A reference run goes
uninterrupted; a "chain" run in another directory is stopped by SIGINT (stage 0),
killed with SIGKILL (stage 2), stopped by SIGTERM (stage 2) and resumed from a
truncated newest checkpoint. At epsilon = inf every resumed run must end with exactly
the reference metrics. After each step no worker_binary, shard directory or temporary
directory of that run remains. Refusals (a directory whose lock a live process holds,
the finished chain re-run with another epsilon) and bad input to every console script
run in ONE driver process (`_cli_driver.py`: the scripts' own `run()`, strict flags
and one-line errors, one TensorFlow import for all cases).
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pina_tff.runtime import locks

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLIENTS = 24
CONFIG = {
    # No model_width: the run must take it from the data (digits_tiny: 64).
    "method": "pina", "num_clusters": 4, "population": NUM_CLIENTS, "seed": 0,
    "privacy": {"epsilon": "inf"},
    "stage0": {"enabled": True, "rounds": 2, "cohort": 8},
    "stage1": {"num_sketch_clients": 12, "local_epochs": 1, "top_k": 8,
               "kmeans_restarts": 2, "lr": 0.5},
    "stage2": {"rounds": 3, "cohort": 8, "warm_rounds": 1, "aggregator": "ddp",
               "server_momentum": 0.5},
}
_TIMEOUT = 240


def _env():
  env = dict(os.environ, PYTHONPATH=_ROOT)
  env.pop("PINA_TFF_VERBOSE", None)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must quiet TensorFlow by itself
  return env


class Proc:
  """A `python -m pipelines.<module>` subprocess with stdout/stderr in files."""

  def __init__(self, base, name, module, *args):
    self.out, self.err = base / f"{name}.out", base / f"{name}.err"
    with open(self.out, "w") as o, open(self.err, "w") as e:
      self.p = subprocess.Popen([sys.executable, "-m", module, *args], cwd=_ROOT,
                                env=_env(), stdout=o, stderr=e)
    self.workers = set()

  def stderr(self):
    return self.err.read_text()

  def wait_for(self, text, timeout=_TIMEOUT):
    deadline = time.monotonic() + timeout
    while text not in self.stderr():
      self._note_workers()
      assert self.p.poll() is None, f"exited {self.p.returncode} before {text!r}:\n" + \
          self.stderr()[-3000:]
      assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"
      time.sleep(0.1)
    self._note_workers()

  def _note_workers(self):
    try:
      for c in psutil.Process(self.p.pid).children(recursive=True):
        if c.name() == "worker_binary":
          self.workers.add(c.pid)
    except psutil.Error:
      pass

  def wait(self, timeout=_TIMEOUT):
    rc = self.p.wait(timeout=timeout)
    return rc, self.out.read_text(), self.stderr()

  def kill(self):
    if self.p.poll() is None:
      self.p.kill()
      self.p.wait()


def _simulate(base, name, root, clients, *extra):
  return Proc(base, name, "pipelines.simulate", f"--clients_dir={clients}",
              f"--root_dir={root}", f"--config={base / 'tiny.json'}", "--progress=log",
              "--checkpoint_every=2", *extra)


def _alive(pid):
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def _assert_clean(proc, root):
  """No worker, shard dir or temp dir of `proc`'s run is left."""
  deadline = time.monotonic() + 10
  while any(_alive(w) for w in proc.workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not [w for w in proc.workers if _alive(w)], "worker_binary left running"
  shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"pina-shards-{proc.p.pid}-")]
  assert not shm, shm
  leftovers = [n for n in os.listdir(root) if ".tmp-" in n]
  ckpt = root / "checkpoints"
  if ckpt.exists():
    leftovers += [n for n in os.listdir(ckpt) if "_temp" in n]
  assert not leftovers, leftovers


def _metrics(root):
  with open(root / "metrics.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def _one_error(stderr):
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, stderr[-3000:]
  return errors[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory, digits_clients_dir):
  from pina_tff.simulation import population  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("robust")
  clients = base / "digits"
  clients.symlink_to(digits_clients_dir, target_is_directory=True)
  population.ensure_embeddings(str(clients), seed=0)  # the cache every run below reads
  (base / "tiny.json").write_text(json.dumps(CONFIG))
  return base


@pytest.fixture(scope="module")
def runs(base):
  """The reference run and the interrupted chain, two processes at a time."""
  clients, ref_root, root = base / "digits", base / "ref", base / "chain"
  out = {}
  ref = _simulate(base, "ref", ref_root, clients)
  try:
    # 1. SIGINT during stage 0.
    p = _simulate(base, "sigint", root, clients)
    p.wait_for("stage 0 round 1 ")
    p.p.send_signal(signal.SIGINT)
    out["sigint"] = p.wait() + (p,)
    # 2. SIGKILL during stage 2.
    p = _simulate(base, "kill9", root, clients)
    p.wait_for("stage 2 round 1 ")
    p.p.kill()
    out["kill9"] = p.wait() + (p,)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in p.workers) and time.monotonic() < deadline:
      time.sleep(0.1)
    out["kill9_workers_alive"] = [w for w in p.workers if _alive(w)]
    # 3. Resume, SIGTERM in stage 2.
    p = _simulate(base, "sigterm", root, clients)
    p.wait_for("stage 2 round 2 ")
    p.p.send_signal(signal.SIGTERM)
    out["sigterm"] = p.wait() + (p,)
    out["ref"] = ref.wait() + (ref,)
    # 4. Truncate the newest checkpoint; the run resumes from the older one.
    ckpt = root / "checkpoints"
    newest = max(ckpt.iterdir(), key=lambda d: int(d.name.rsplit("_", 1)[1]))
    out["truncated_version"] = newest.name
    for f in newest.rglob("*"):
      if f.is_file() and f.stat().st_size > 16:
        with open(f, "r+b") as fh:
          fh.truncate(f.stat().st_size // 2)
    p = _simulate(base, "truncated", root, clients)
    out["truncated"] = p.wait() + (p,)
  finally:
    for name in list(out):
      if isinstance(out[name], tuple) and len(out[name]) == 4:
        out[name][3].kill()
    ref.kill()
  return out


def test_sigint_stops_cleanly_with_checkpoint(runs, base):
  rc, _, err = runs["sigint"][:3]
  assert rc == 128 + signal.SIGINT, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  # It stops after the round it is in (round 1 or 2 of stage 0, or before stage 1).
  assert re.search(r"stopped by SIGINT at stage [01] round [012] \(checkpoint saved\)",
                   err), err[-2000:]
  assert re.search(r"resuming from checkpoint: phase [01], round [012]",
                   runs["kill9"][2]), runs["kill9"][2][-2000:]
  _assert_clean(runs["sigint"][3], base / "chain")


def test_kill9_leaves_no_worker(runs):
  rc = runs["kill9"][0]
  assert rc == -signal.SIGKILL
  assert runs["kill9"][3].workers, "the run never started a worker_binary"
  assert runs["kill9_workers_alive"] == []


def test_second_run_on_same_root_dir_is_refused(driver, base):
  rc, _, err = driver["concurrent"]
  line = _one_error(err)
  assert line.startswith(f"error: run directory in use by pid {os.getpid()}"), line
  assert rc == 2
  assert sorted(os.listdir(base / "locked")) == [".lock"]


def test_sigterm_stops_cleanly_after_resume_and_sweeps(runs, base):
  rc, _, err = runs["sigterm"][:3]
  assert "resuming from checkpoint: phase 2, round 0" in err, err[-3000:]
  assert rc == 128 + signal.SIGTERM, err[-3000:]
  assert "Traceback" not in err
  assert "stopped by SIGTERM at stage 2 round 2 (checkpoint saved)" in err, err[-2000:]
  # The start-up sweep removed what the SIGKILLed run left in /dev/shm.
  killed = runs["kill9"][3]
  assert not [n for n in os.listdir("/dev/shm")
              if n.startswith(f"pina-shards-{killed.p.pid}-")]
  _assert_clean(runs["sigterm"][3], base / "chain")


def test_truncated_checkpoint_falls_back_and_metrics_match_uninterrupted(runs, base):
  rc, _, err = runs["ref"][:3]
  assert rc == 0, err[-3000:]
  rc, _, err = runs["truncated"][:3]
  assert rc == 0, err[-3000:]
  assert f"checkpoint {runs['truncated_version']} is unreadable" in err, err[-3000:]
  assert len([ln for ln in err.splitlines() if "unreadable" in ln]) == 1
  ref, resumed = _metrics(base / "ref"), _metrics(base / "chain")
  assert [r["key"] for r in resumed] == [str(k) for k in range(1, 6)]
  assert resumed == ref
  ref_sum = json.loads((base / "ref" / "summary.json").read_text())
  sum_ = json.loads((base / "chain" / "summary.json").read_text())
  assert sum_["final_accuracy"] == ref_sum["final_accuracy"]
  _assert_clean(runs["truncated"][3], base / "chain")


def test_resume_with_other_config_is_refused_and_rewrites_nothing(driver, base):
  rc, _, err = driver["other_eps"]
  line = _one_error(err)
  assert "privacy.epsilon ('inf' -> 2.0)" in line and "--restart" in line, line
  assert rc == 2
  summary = json.loads((base / "chain" / "summary.json").read_text())
  assert summary["epsilon_target"] == "inf"


def test_summary_states_the_runs_facts(runs, base):
  """summary.json holds what the run used: the data's population and model width (the
  config file gave neither), the config's cohort, rounds and C, one metrics row per
  round, and the same config as config.json."""
  assert runs["ref"][0] == 0, runs["ref"][2][-3000:]
  s = json.loads((base / "ref" / "summary.json").read_text())
  assert (s["dataset"], s["population"]) == ("digits", NUM_CLIENTS)
  assert s["config"]["model_width"] == 64  # digits_tiny, not RunConfig's 384
  assert s["config"]["population"] == NUM_CLIENTS
  assert s["config"]["stage1"]["top_k"] == CONFIG["stage1"]["top_k"]
  assert s["num_clusters"] == CONFIG["num_clusters"]
  assert s["cohort"] == CONFIG["stage2"]["cohort"]
  assert s["rounds"] == {"stage0": CONFIG["stage0"]["rounds"],
                         "stage2": CONFIG["stage2"]["rounds"]}
  # What the run used: 'ddp' at epsilon = inf adds no noise and runs as the secure sum.
  assert (CONFIG["stage2"]["aggregator"], s["aggregator"]) == ("ddp", "secure_sum")
  assert s["epsilon_target"] == "inf" and s["method"] == CONFIG["method"]
  assert len(_metrics(base / "ref")) == sum(s["rounds"].values())
  assert json.loads((base / "ref" / "config.json").read_text()) == s["config"]


def _stopped_at_once(p, signum, start, within=5.0):
  rc, _, err = p.wait(timeout=60)
  took = time.monotonic() - start
  assert rc == 128 + signum, (rc, err[-3000:])
  assert took < within, (took, err[-2000:])
  assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
  assert "KeyboardInterrupt" not in err, err[-3000:]
  return err


def test_signal_during_start_up_stops_at_once(base):
  p = _simulate(base, "early", base / "early", base / "digits")
  try:
    time.sleep(1.0)  # importing TensorFlow
    p.p.send_signal(signal.SIGINT)
    err = _stopped_at_once(p, signal.SIGINT, time.monotonic())
  finally:
    p.kill()
  assert [ln for ln in err.splitlines() if ln.startswith("stopped by SIGINT")] == [
      "stopped by SIGINT (no round was running: nothing to save); run the same "
      "command to resume"], err
  assert not (base / "early").exists() or not [
      n for n in os.listdir(base / "early") if n in ("checkpoints", "metrics.csv")]


def test_signal_during_pre_training_stops_at_once(tmp_path):
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  clients = tmp_path / "fresh"  # no backbone cached: the run pre-trains one first
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      output_dir=str(clients), dataset="digits", num_clients=12, num_shards=1, seed=0))
  p = Proc(tmp_path, "pretrain", "pipelines.simulate", f"--clients_dir={clients}",
           f"--root_dir={tmp_path / 'run'}", "--progress=log")
  try:
    p.wait_for("pre-training the digits_tiny backbone")
    time.sleep(1.0)
    p.p.send_signal(signal.SIGTERM)
    err = _stopped_at_once(p, signal.SIGTERM, time.monotonic())
  finally:
    p.kill()
  assert len([ln for ln in err.splitlines() if ln.startswith("stopped by")]) == 1, err
  assert not (clients / "backbone" / "digits_tiny.weights.h5").exists()


def test_second_sigterm_stops_at_once_without_traceback(base):
  p = _simulate(base, "twice", base / "twice", base / "digits")
  try:
    p.wait_for("stage 0 round 1 ")
    p.p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    p.p.send_signal(signal.SIGTERM)
    err = _stopped_at_once(p, signal.SIGTERM, time.monotonic(), within=10.0)
  finally:
    p.kill()
  assert "stopped by SIGTERM again: stopping now" in err, err[-2000:]
  deadline = time.monotonic() + 10  # the guard kills the workers of a stopped parent
  while any(_alive(w) for w in p.workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not [w for w in p.workers if _alive(w)], "worker_binary left running"


def test_cli_start_up_is_quiet(runs):
  for name in ("ref", "sigterm", "truncated"):
    err = runs[name][2]
    for noise in ("cuDNN", "oneDNN", "TensorRT", "Using TensorFlow backend",
                  "single_machine.cc"):
      assert noise not in err, (name, noise)
    assert "Using TensorFlow backend" not in runs[name][1]


# ------------------------------------------------------------------ bad input, one line
def _driver_cases(base):
  """name -> ([module, argv], words the error line must contain)."""
  clients = base / "digits"
  a_file = base / "a_file"
  a_file.write_text("not a directory")
  bad_cfg = base / "bad_types.json"
  bad_cfg.write_text(json.dumps(dict(CONFIG, stage2=dict(CONFIG["stage2"], rounds="ten"))))
  corrupt = base / "corrupt"
  if not corrupt.exists():
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.copytree(clients, corrupt, ignore=shutil.ignore_patterns("embeddings", ".lock"))
    shard = next(corrupt.glob("clients-*.tfrecord"))
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
  weights = next((clients / "backbone").glob("*.weights.h5"))
  sim = "pipelines.simulate"
  run_flags = [f"--clients_dir={clients}", f"--config={base / 'tiny.json'}",
               "--progress=none"]
  return {
      # A run on a directory whose lock a live process (the test) holds.
      "concurrent": ([sim, run_flags + [f"--root_dir={base / 'locked'}"]], []),
      # The finished chain run again with another epsilon.
      "other_eps": ([sim, run_flags + [f"--root_dir={base / 'chain'}", "--epsilon=2"]],
                    []),
      "root_dir_is_a_file": ([sim, [f"--clients_dir={clients}", f"--root_dir={a_file}"]],
                             ["--root_dir", "is a file"]),
      "root_dir_under_a_file": ([sim, [f"--clients_dir={clients}",
                                       f"--root_dir={a_file}/run"]],
                                ["--root_dir", "a file"]),
      "config_wrong_type": ([sim, [f"--clients_dir={clients}", f"--config={bad_cfg}",
                                   f"--root_dir={base / 'typed'}"]],
                            ["stage2.rounds", "integer", "'ten'"]),
      "prepare_under_a_file": (["pipelines.prepare_data", [f"--output_dir={a_file}/d"]],
                               ["--output_dir", "a file"]),
      "prepare_unknown_flag": (["pipelines.prepare_data", [f"--output_dir={base}/typo",
                                                           "--num_clientz=5"]],
                               ["num_clientz"]),
      "pretrain_output_under_a_file": (["pipelines.pretrain", [
          f"--clients_dir={clients}", f"--output={a_file}/w.weights.h5"]],
                                       ["--output", "a file"]),
      "embed_missing_clients_dir": (["pipelines.embed", [f"--output_dir={base}/e1"]],
                                    ["clients_dir"]),
      "embed_int8": (["pipelines.embed", [f"--clients_dir={clients}",
                                          f"--output_dir={base}/e2", "--dtype=int8"]],
                     ["dtype", "int8"]),
      "embed_corrupt_shard": (["pipelines.embed", [f"--clients_dir={corrupt}",
                                                   f"--weights={weights}",
                                                   f"--output_dir={base}/e3"]],
                              ["corrupt", str(corrupt)]),
  }


@pytest.fixture(scope="module")
def driver(base, runs):  # after `runs`: "other_eps" needs the finished chain
  """{case: [status, stdout, stderr]} from one `_cli_driver.py` process."""
  cases = {name: spec for name, (spec, _) in _driver_cases(base).items()}
  (base / "cases.json").write_text(json.dumps(cases))
  with locks.exclusive(str(base / "locked")):
    p = Proc(base, "driver", "tests.pipelines._cli_driver", str(base / "cases.json"),
             str(base / "driver_out.json"))
    rc, _, err = p.wait()
  assert rc == 0, err[-3000:]
  return json.loads((base / "driver_out.json").read_text())


_BAD = ["root_dir_is_a_file", "root_dir_under_a_file", "config_wrong_type",
        "prepare_under_a_file", "prepare_unknown_flag", "pretrain_output_under_a_file",
        "embed_missing_clients_dir", "embed_int8", "embed_corrupt_shard"]


@pytest.mark.parametrize("name", _BAD)
def test_bad_input_gives_one_error_line(driver, name, base):
  rc, stdout, stderr = driver[name]
  line = _one_error(stderr)
  assert "Traceback" not in stdout
  for word in _driver_cases(base)[name][1]:
    assert word in line, (word, line)
  assert rc == 2, (rc, stderr[-2000:])
  assert not (base / "typo").exists()
  assert not [n for n in os.listdir(base) if ".tmp-" in n]


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_embeddings_of_wrong_shape_or_dtype_are_one_data_error(base, tmp_path, change):
  import shutil  # pylint: disable=g-import-not-at-top
  from pina_tff.errors import DataError  # pylint: disable=g-import-not-at-top
  from pina_tff.simulation import population  # pylint: disable=g-import-not-at-top
  emb = tmp_path / "emb"
  shutil.copytree(base / "digits" / "embeddings", emb)
  manifest = json.loads((emb / "manifest.json").read_text())
  t, d = manifest["embedding_shape"]
  if change == "shape":  # same byte size, transposed
    manifest["embedding_shape"] = [d, t]
  else:  # same byte size: float32 [T, d] read as float16 [T, 2d]
    manifest["embedding_dtype"], manifest["embedding_shape"] = "float16", [t, 2 * d]
  (emb / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(DataError, match="embedding_shape"):
    population.load_population(str(emb))


def test_cache_is_keyed_by_what_built_it(base):
  from pina_tff.models import weights as weights_lib  # pylint: disable=g-import-not-at-top
  from pina_tff.simulation import cache  # pylint: disable=g-import-not-at-top
  clients, emb = base / "digits", base / "digits" / "embeddings"
  manifest = json.loads((emb / "manifest.json").read_text())
  sha = weights_lib.sha256_file(manifest["weights_file"])
  key0 = json.loads((emb / cache.KEY_NAME).read_text())["key"]
  assert key0["seed"] == 0
  assert key0["source_manifest_sha256"] == cache.source_sha256(str(clients))
  assert cache.embeddings_current(str(emb), key0, sha)
  assert not cache.embeddings_current(str(emb), dict(key0, seed=1), sha)
  assert not cache.embeddings_current(
      str(emb), dict(key0, source_manifest_sha256="0" * 64), sha)
  assert not cache.weights_current(manifest["weights_file"], dict(key0, seed=1))


def test_changed_weights_are_refused_when_loaded(base, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from pina_tff.errors import DataError  # pylint: disable=g-import-not-at-top
  from pina_tff.simulation import population  # pylint: disable=g-import-not-at-top
  emb = tmp_path / "emb"
  shutil.copytree(base / "digits" / "embeddings", emb)
  manifest = json.loads((emb / "manifest.json").read_text())
  weights = tmp_path / "w.weights.h5"
  shutil.copy(manifest["weights_file"], weights)
  with open(weights, "ab") as f:
    f.write(b"\0")
  manifest["weights_file"] = str(weights)
  (emb / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(DataError, match="changed since the embeddings were made"):
    population.load_population(str(emb))


def test_second_cache_builder_waits_for_the_first(base):
  from pina_tff.simulation import population  # pylint: disable=g-import-not-at-top
  clients = base / "digits"
  code = ("import time; from pina_tff.simulation import cache\n"
          f"with cache.build_lock({str(clients)!r}):\n"
          "  print('held', flush=True); time.sleep(3)\n")
  p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_env(),
                       cwd=_ROOT)
  try:
    assert p.stdout.readline().strip() == b"held"
    log, start = [], time.monotonic()
    emb = population.ensure_embeddings(str(clients), seed=0, log=log.append)
    assert time.monotonic() - start > 1.0
    assert log and log[0].startswith(f"waiting for pid {p.pid}"), log
    assert len(log) == 1  # then found the cache built: no pre-training, no embedding
    assert emb == str(clients / "embeddings")
  finally:
    p.wait(timeout=30)
    p.stdout.close()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
