"""Every numeric flag of every entry point, fed {0, -1, nan, inf, 1e30, 2**70} and a few
type errors: a value the flag rejects gives exit status 2, exactly one `error:` line
that names the flag, and no traceback, before any TensorFlow / TFF work starts; a value
it accepts is listed in `VALID` (for pina-simulate, checked with --print_config: exit 0
and the value in the resolved config). Then the defaults: the preset follows the data,
a --config file is laid over it, fields of a stage that does not run are not checked
against the population.

All cases run in ONE `_cli_driver.py` process (one TensorFlow import), on a tiny
prepared digits population made here (no backbone: nothing here needs one).
pina-bench is a development tool and not in the table (its flags get only cli's
generic nan / inf / 32-bit check).
"""
import json
import os
import re

import pytest

from tests.pipelines import _cli_driver as cli_driver

_ROOT = cli_driver.ROOT
NUM_CLIENTS = 12
VALUES = {"0": "0", "-1": "-1", "nan": "nan", "inf": "inf", "1e30": "1e30",
          "2**70": str(2 ** 70)}

# module -> its numeric flags
FLAGS = {
    "pipelines.simulate": [
        "epsilon", "delta", "rounds", "stage0_rounds", "cohort", "num_clusters", "seed",
        "local_epochs", "batch_size", "client_lr", "server_lr", "server_momentum",
        "clip", "sketch_clients", "sketch_epochs", "sketch_lr", "top_k", "sketch_clip",
        "warm_rounds", "fedprox_mu", "workers", "shard_size", "checkpoint_every",
        "eval_every", "restore_max_gain", "ddp_bits"],
    "pipelines.prepare_data": ["num_clients", "num_clusters", "public_size", "seed",
                               "num_shards", "test_fraction", "public_fraction"],
    "pipelines.pretrain": ["epochs", "seed", "batch_size", "learning_rate",
                           "holdout_fraction"],
    "pipelines.embed": ["batch_size"],
    "pipelines.grid": ["seed"],
}
# (module, flag) -> the values of VALUES it accepts; every other value is an error.
VALID = {
    ("pipelines.simulate", "epsilon"): {"inf"},
    ("pipelines.simulate", "rounds"): {"0"},
    ("pipelines.simulate", "stage0_rounds"): {"0"},
    ("pipelines.simulate", "seed"): {"0"},
    ("pipelines.simulate", "server_momentum"): {"0"},
    ("pipelines.simulate", "warm_rounds"): {"0"},
    ("pipelines.simulate", "fedprox_mu"): {"0"},
    ("pipelines.prepare_data", "public_size"): {"0"},
    ("pipelines.prepare_data", "seed"): {"0"},
    ("pipelines.prepare_data", "num_shards"): {"0"},
    ("pipelines.prepare_data", "test_fraction"): {"0"},
    ("pipelines.prepare_data", "public_fraction"): {"0"},
    ("pipelines.pretrain", "seed"): {"0"},
    ("pipelines.pretrain", "holdout_fraction"): {"0"},
    ("pipelines.grid", "seed"): {"0"},
}
TYPE_ERRORS = {
    ("pipelines.simulate", "rounds"): "ten", ("pipelines.simulate", "client_lr"): "fast",
    ("pipelines.simulate", "seed"): "1.5", ("pipelines.simulate", "epsilon"): "abc",
    ("pipelines.prepare_data", "num_clients"): "many",
    ("pipelines.pretrain", "learning_rate"): "x", ("pipelines.embed", "batch_size"): "",
    ("pipelines.grid", "seed"): "0x",
}
# pina-simulate flag -> its dotted config field (to find an accepted value there).
SIMULATE_FIELDS = {"epsilon": "privacy.epsilon", "rounds": "stage2.rounds",
                   "stage0_rounds": "stage0.rounds", "seed": "seed",
                   "server_momentum": "stage2.server_momentum",
                   "warm_rounds": "stage2.warm_rounds", "fedprox_mu": "stage2.fedprox_mu"}


def _base_argv(module, base):
  clients = str(base / "digits")
  return {
      "pipelines.simulate": [f"--clients_dir={clients}", f"--root_dir={base / 'run'}",
                             "--progress=none"],
      "pipelines.prepare_data": [f"--output_dir={base / 'prepared'}"],
      "pipelines.pretrain": [f"--clients_dir={clients}",
                             f"--output={base / 'w' / 'b.weights.h5'}"],
      "pipelines.embed": [f"--clients_dir={clients}", f"--output_dir={base / 'emb'}"],
      "pipelines.grid": [f"--output_dir={base / 'grid'}"],
  }[module]


def _cases(base):
  """name -> (module, argv, flag, value name, accepted)."""
  cases = {}
  for module, names in FLAGS.items():
    for flag in names:
      values = dict(VALUES)
      if (module, flag) in TYPE_ERRORS:
        values["type"] = TYPE_ERRORS[(module, flag)]
      for vname, text in values.items():
        ok = vname in VALID.get((module, flag), set())
        if ok and module != "pipelines.simulate":
          continue  # accepted: would run the job (listed in VALID)
        argv = _base_argv(module, base) + [f"--{flag}={text}"]
        if ok:
          argv.append("--print_config")
        cases[f"{module.split('.')[1]}:{flag}={vname}"] = (module, argv, flag, vname, ok)
  return cases


def _config_cases(base):
  sim = "pipelines.simulate"
  clients = f"--clients_dir={base / 'digits'}"
  (base / "ifca.json").write_text(json.dumps({"method": "ifca"}))
  # The FMNIST preset written out for 2,000 clients (its stage 0 is off) and laid over
  # the digits preset of 12 clients: stage 0's cohort is not checked.
  (base / "fmnist_2k.json").write_text(json.dumps({
      "stage0": {"enabled": False, "rounds": 0, "cohort": 10000},
      "stage1": {"num_sketch_clients": "up to 2000", "train_head": False},
      "stage2": {"cohort": "all", "rounds": 15, "local_epochs": 5, "client_lr": 1.0,
                 "server_lr": 10.0}}))
  (base / "bad_fraction.json").write_text(json.dumps({"stage2": {"cohort": 1.5}}))
  (base / "big_cohort.json").write_text(json.dumps({"stage2": {"cohort": 13}}))
  return {
      "cfg:data_preset": (sim, [clients, "--print_config"]),
      "cfg:fmnist_preset": (sim, [clients, "--print_config", "--preset=fashion_mnist"]),
      "cfg:ifca_file": (sim, [clients, "--print_config", f"--config={base / 'ifca.json'}"]),
      "cfg:fmnist_2k_file": (sim, [clients, "--print_config",
                                   f"--config={base / 'fmnist_2k.json'}"]),
      "cfg:flag_over_file": (sim, [clients, "--print_config", "--cohort=3",
                                   f"--config={base / 'fmnist_2k.json'}"]),
      "cfg:bad_fraction": (sim, [clients, "--print_config",
                                 f"--config={base / 'bad_fraction.json'}"]),
      "cfg:big_cohort": (sim, [clients, "--print_config",
                               f"--config={base / 'big_cohort.json'}"]),
  }


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  from pina_tff.data import beam_prepare  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("bad_input")
  beam_prepare.prepare(beam_prepare.PrepareConfig(
      output_dir=str(base / "digits"), dataset="digits", num_clients=NUM_CLIENTS,
      num_shards=1, seed=0))
  return base


@pytest.fixture(scope="module")
def results(base):
  cases = {name: [c[0], c[1]] for name, c in _cases(base).items()}
  cases.update({name: list(c) for name, c in _config_cases(base).items()})
  return cli_driver.drive(cases, base, timeout=600)


def _one_error(rc, stdout, stderr):
  assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
  errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, stderr[-3000:]
  assert rc == 2, (rc, stderr[-2000:])
  return errors[0]


def _field(config, dotted):
  for key in dotted.split("."):
    config = config[key]
  return config


def test_table_covers_every_numeric_flag():
  """The table lists every integer / float flag the entry modules define."""
  text_flags = {("pipelines.simulate", "epsilon")}  # a string flag that is a number
  for module, names in FLAGS.items():
    with open(os.path.join(_ROOT, *module.split(".")) + ".py") as f:
      source = f.read()
    defined = set(re.findall(r'DEFINE_(?:integer|float)\(\s*"(\w+)"', source))
    assert defined | {f for m, f in text_flags if m == module} == set(names), module


def test_every_rejected_value_is_one_line_naming_the_flag(results, base):
  cases = _cases(base)
  rejected = [n for n, c in cases.items() if not c[4]]
  assert len(rejected) > 200
  for name in rejected:
    module, _, flag, vname, _ = cases[name]
    rc, stdout, stderr = results[name]
    line = _one_error(rc, stdout, stderr)
    assert f"--{flag}" in line, (name, line)
  # Nothing was written for a rejected flag.
  assert not (base / "run").exists()
  assert not (base / "prepared").exists()
  assert not (base / "w").exists() and not (base / "emb").exists()
  assert not (base / "grid").exists()
  assert sorted(os.listdir(base / "digits")) == [
      "clients-00000-of-00001.tfrecord", "manifest.json", "public.tfrecord"]


def test_accepted_values_reach_the_resolved_config(results, base):
  cases = _cases(base)
  accepted = [n for n, c in cases.items() if c[4]]
  assert len(accepted) == sum(len(v) for (m, _), v in VALID.items()
                              if m == "pipelines.simulate")
  for name in accepted:
    _, _, flag, vname, _ = cases[name]
    rc, stdout, stderr = results[name]
    assert rc == 0 and "Traceback" not in stderr, (name, stderr[-2000:])
    value = _field(json.loads(stdout), SIMULATE_FIELDS[flag])
    assert value == ("inf" if vname == "inf" else 0), (name, value)


def _config(results, name):
  rc, stdout, stderr = results[name]
  assert rc == 0 and "Traceback" not in stderr, stderr[-2000:]
  lines = stderr.splitlines()
  assert lines[0].startswith("settings: "), lines
  return json.loads(stdout), lines[0]


def test_defaults_follow_the_data(results):
  cfg, line = _config(results, "cfg:data_preset")
  assert line.startswith(f"settings: digits preset, {NUM_CLIENTS} clients, C = 4, pina")
  assert (cfg["population"], cfg["model_width"]) == (NUM_CLIENTS, 64)
  # digits: half the population per round, every client sketches.
  assert cfg["stage0"]["cohort"] == cfg["stage2"]["cohort"] == NUM_CLIENTS // 2
  assert cfg["stage1"]["num_sketch_clients"] == NUM_CLIENTS
  cfg, line = _config(results, "cfg:fmnist_preset")
  assert line.startswith(f"settings: fashion_mnist preset, {NUM_CLIENTS} clients")
  assert cfg["stage0"]["enabled"] is False
  assert cfg["stage2"]["cohort"] == cfg["stage1"]["num_sketch_clients"] == NUM_CLIENTS
  assert (cfg["stage2"]["server_lr"], cfg["stage2"]["rounds"]) == (10.0, 15)


def test_config_file_is_laid_over_the_same_preset(results):
  cfg, line = _config(results, "cfg:ifca_file")
  assert cfg["method"] == "ifca" and "ifca.json" in line
  assert cfg["stage2"]["rounds"] == 30  # the digits preset's, not RunConfig's 200
  assert cfg["stage1"]["num_sketch_clients"] == NUM_CLIENTS
  cfg, _ = _config(results, "cfg:fmnist_2k_file")
  assert cfg["stage0"]["cohort"] == 10000 and cfg["stage0"]["enabled"] is False
  assert cfg["stage2"]["cohort"] == NUM_CLIENTS
  assert cfg["stage1"]["num_sketch_clients"] == NUM_CLIENTS
  cfg, line = _config(results, "cfg:flag_over_file")
  assert cfg["stage2"]["cohort"] == 3 and "--cohort" in line


def test_bad_config_values_name_the_file(results, base):
  line = _one_error(*results["cfg:bad_fraction"])
  assert "bad_fraction.json" in line and "stage2.cohort" in line and "1.5" in line
  line = _one_error(*results["cfg:big_cohort"])
  assert "big_cohort.json" in line and f"population ({NUM_CLIENTS})" in line


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
