"""Fixed shards for the precision tests, and the float32 golden file they are checked
against (`testdata/shard_update_float32.npz`, written by the client work as it was
before the precision option: commit 6de9958).

Regenerate the golden file only for an intended change of float32 results:
    python -m tests.training.precision_cases
"""
import os
import platform

import numpy as np
import tensorflow as tf

from pina_tff.models import reduced_tail as rt
from pina_tff.training import local
from pina_tff.training import models as tm
from pina_tff.training import shards

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata",
                      "shard_update_float32.npz")
TAIL = rt.TailConfig(width=16, num_heads=2, mlp_dim=32, num_classes=3)


def frozen_weights(config=TAIL, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in config.frozen_shapes().items():
    if k.endswith("_gamma"):
      out[k] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    elif k.endswith("_beta"):
      out[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      scale = 1.0 / np.sqrt(shape[0]) if len(shape) > 1 else 0.1
      out[k] = (scale * rng.standard_normal(shape)).astype(np.float32)
  return out


def tail_shard(num_clients=6, n=7, seed=3, config=TAIL):
  """A ViT-tail shard: clients of 1..n examples, two slots of padding."""
  rng = np.random.default_rng(seed)
  clients = []
  for i in range(num_clients):
    m = int(rng.integers(1, n + 1))
    clients.append({
        "x_base": rng.standard_normal((m, config.width)).astype(np.float32),
        "z": (0.5 * rng.standard_normal((m, config.num_heads, config.width))
              ).astype(np.float32),
        "label": rng.integers(0, config.num_classes, m).astype(np.int32),
        "true_cluster": i % 2})
  return shards.pack_shard(clients, ("x_base", "z"), n_max=n, num_slots=num_clients + 2,
                           seed=(7, 100))


def cluster_params(c=2, seed=5, config=TAIL, scale=0.3):
  rng = np.random.default_rng(seed)
  return {k: (scale * rng.standard_normal((c,) + s)).astype(np.float32)
          for k, s in config.param_shapes().items()}


#: name -> LocalSpec keyword arguments (each a different path through local_train).
SPECS = {
    "pina": dict(num_clusters=2, local_epochs=2, batch_size=3, learning_rate=0.5,
                 clip_norm=0.05, choose_cluster=True, fedprox_mu=0.1,
                 num_true_clusters=2),
    "full_batch_noclip": dict(num_clusters=2, local_epochs=3, batch_size=16,
                              learning_rate=0.5, choose_cluster=True,
                              num_true_clusters=2),
    "head_only": dict(num_clusters=1, local_epochs=2, batch_size=4, learning_rate=0.5,
                      clip_norm=0.1, train_keys=tm.HEAD_KEYS, send_keys=tm.HEAD_KEYS),
}


def tail_model():
  return tm.ViTTailModel(TAIL, frozen_weights())


def run_case(name, graph=False, **extra):
  """(update_sum [C, P], diagnostics) of `shard_update` on the fixed shard, eagerly or
  (``graph``) traced as one tf.function, as the TFF client computation runs it."""
  spec = local.LocalSpec(**SPECS[name], **extra)
  params = cluster_params(SPECS[name]["num_clusters"])
  model, shard = tail_model(), tail_shard()
  fn = lambda: local.shard_update(model, spec, params, shard)  # noqa: E731
  update, diag = tf.function(fn)() if graph else fn()
  return update.numpy(), {k: v.numpy() for k, v in diag.items()}


def cpu_signature():
  flags = set()
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and not model:
          model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  isa = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
  return f"{platform.machine()} {model} tf{tf.__version__} " + " ".join(isa)


def write_golden(path=GOLDEN):
  out = {"cpu_signature": np.array(cpu_signature())}
  for name in SPECS:
    for graph in (False, True):
      key = f"{name}/{'graph' if graph else 'eager'}"
      update, diag = run_case(name, graph=graph)
      out[f"{key}/update"] = update
      for k, v in diag.items():
        out[f"{key}/{k}"] = v
  np.savez(path, **out)
  return path


if __name__ == "__main__":
  print(write_golden())
