"""The head workload (see benchmarks/bench.py `head`) in pfl-research's simulation.

Run through benchmarks/run_pfl.sh, which makes a separate venv with `pfl` and CPU torch
(pfl and TFF cannot share one environment). Same workload: N users x 32 examples of
384-dim float features, a 384->10 linear model (torch.nn.Linear), 1 local epoch of
batch 16 with SGD lr 0.1, FedAvg, central DP: `CentrallyAppliedPrivacyMechanism(
GaussianMechanism(clipping_bound=0.1, relative_noise_stddev=1.0))` (each user's update
clipped to L2 0.1, Gaussian noise with std 0.1 on the sum), server SGD lr 1.0, cohort
= all N users every round. pfl's FedAvg averages by the users' weights (1 per user
here: `Weighted` statistics of weight 1 after the privacy mechanism), i.e. sum / N.

Round 1 is a warm-up; prints the median ms per client of the next --rounds rounds and
as the last line: `pfl clients=N pfl_ms_per_client=X`.
"""

import argparse
import statistics
import time

import numpy as np
import torch

from pfl.aggregate.simulate import SimulatedBackend
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Weighted
from pfl.model.pytorch import PyTorchModel
from pfl.privacy import CentrallyAppliedPrivacyMechanism, GaussianMechanism

DIM, CLASSES, EXAMPLES, BATCH = 384, 10, 32, 16


class Linear(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.fc = torch.nn.Linear(DIM, CLASSES)

  def forward(self, x):
    return self.fc(x)

  def loss(self, x, y, eval=False):  # pylint: disable=redefined-builtin
    self.eval() if eval else self.train()
    return torch.nn.functional.cross_entropy(self(x), y)

  def metrics(self, x, y, eval=False):  # pylint: disable=redefined-builtin
    self.eval() if eval else self.train()
    loss = torch.nn.functional.cross_entropy(self(x), y, reduction="sum").item()
    return {"loss": Weighted(loss, len(x))}


class Timer(TrainingProcessCallback):

  def __init__(self):
    self.stamps = [time.perf_counter()]

  def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
    self.stamps.append(time.perf_counter())
    from pfl.metrics import Metrics  # pylint: disable=g-import-not-at-top
    return False, Metrics()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--clients", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--noise_multiplier", type=float, default=1.0)
  parser.add_argument("--threads", type=int, default=0)
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  n = args.clients
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.standard_normal((n, EXAMPLES, DIM), dtype=np.float32))
  y = torch.from_numpy(rng.integers(0, CLASSES, (n, EXAMPLES)).astype(np.int64))
  users = {i: Dataset(raw_data=[x[i], y[i]], user_id=i) for i in range(n)}
  sampler = get_user_sampler("minimize_reuse", list(range(n)))
  train_data = FederatedDataset(lambda uid: users[uid], sampler)
  val_data = FederatedDataset(lambda uid: users[uid], get_user_sampler("random", [0]))
  module = Linear()
  model = PyTorchModel(model=module, local_optimizer_create=torch.optim.SGD,
                       central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
  mechanism = CentrallyAppliedPrivacyMechanism(
      GaussianMechanism(clipping_bound=0.1, relative_noise_stddev=args.noise_multiplier))
  backend = SimulatedBackend(training_data=train_data, val_data=val_data,
                             postprocessors=[mechanism])
  timer = Timer()
  FederatedAveraging().run(
      algorithm_params=NNAlgorithmParams(central_num_iterations=args.rounds + 1,
                                         evaluation_frequency=10**9,
                                         train_cohort_size=n, val_cohort_size=None),
      backend=backend, model=model,
      model_train_params=NNTrainHyperParams(local_num_epochs=1, local_learning_rate=0.1,
                                            local_batch_size=BATCH),
      model_eval_params=NNEvalHyperParams(local_batch_size=BATCH),
      callbacks=[timer], send_metrics_to_platform=False)
  times = np.diff(timer.stamps)[1:]  # drop the warm-up round
  med = statistics.median(times)
  print(f"pfl {pfl_version()} torch {torch.__version__} threads={torch.get_num_threads()}: "
        f"rounds {', '.join(f'{t:.3f}' for t in times)} s")
  print(f"pfl clients={n} pfl_ms_per_client={1000 * med / n:.4f}")


def pfl_version():
  import pfl  # pylint: disable=g-import-not-at-top
  return getattr(pfl, "__version__", "?")


if __name__ == "__main__":
  main()
