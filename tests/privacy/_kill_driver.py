"""A run of `computations.program.program` that kills itself with SIGKILL at a chosen point
(for tests/privacy/test_kill_resume.py), and writes what the server computed.

  python -m tests.privacy._kill_driver CLIENTS ROOT CONFIG_JSON KILL OBSERVED

KILL: 'stage2:R' (SIGKILL right after stage-2 round R's metrics are released, before
the checkpoint that follows), 'stage1' (right after the noisy sketches reach the
server, before stage 1's checkpoint) or 'none'. OBSERVED: a file to which every
computation the server runs is appended, one JSON line {stage, round, ids}, written
when its client data are handed to the computation (before it runs), independently
of the program's own execution log. Nothing here changes what the program computes.
"""
import json
import os
import signal
import sys
from computations.program import plan as plan_lib


def main(clients, root, config_path, kill, observed):
  from computations.runtime import context  # pylint: disable=g-import-not-at-top
  from computations.program import program  # pylint: disable=g-import-not-at-top
  from computations.program import release  # pylint: disable=g-import-not-at-top
  from computations.learning import stage1  # pylint: disable=g-import-not-at-top
  from pina_tff import config as config_lib  # pylint: disable=g-import-not-at-top

  out = open(observed, "a", buffering=1, encoding="utf-8")  # pylint: disable=consider-using-with
  real_source = plan_lib.round_data_source

  def source(plan):
    src = real_source(plan)
    real_round_data = src.round_data

    def round_data(stage, rnd, ids, seeds, **kwargs):
      out.write(json.dumps({"stage": int(stage), "round": int(rnd),
                            "ids": [int(i) for i in ids]}) + "\n")
      return real_round_data(stage, rnd, ids, seeds, **kwargs)
    src.round_data = round_data
    return src
  plan_lib.round_data_source = source

  if kill.startswith("stage2:"):
    kill_round = int(kill.split(":")[1])
    real_call = release.MetricsRelease.__call__

    def call(self, r):
      real_call(self, r)
      if r.stage == 2 and r.rnd == kill_round:
        os.kill(os.getpid(), signal.SIGKILL)
    release.MetricsRelease.__call__ = call
  elif kill == "stage1":
    real_collect = stage1.collect_sketches

    def collect(results):
      sketches = real_collect(results)
      os.kill(os.getpid(), signal.SIGKILL)
      return sketches
    stage1.collect_sketches = collect

  cfg = config_lib.load_config(config_path)
  opts = program.ProgramOptions(shard_size=4, checkpoint_every=3, progress="log",
                                simulation_diagnostics=False)
  with context.tff_context():
    program.run_simulation(cfg, clients, root, opts)
  return 0


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:]))
