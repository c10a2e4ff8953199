"""Generated stand-ins for datasets that cannot be downloaded in tests."""
import numpy as np


def make_fake_emnist(num_writers=6, num_train=5, num_test=2, seed=0):
  """(train, test) TestClientData shaped like TFF's federated EMNIST."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def client(n):
    return {"label": rng.integers(0, 62, n).astype(np.int32),
            "pixels": rng.random((n, 28, 28)).astype(np.float32)}
  writers = [f"f{i:04d}_{i % 7:02d}" for i in range(num_writers)]
  train = {w: client(num_train) for w in writers}
  test = {w: client(num_test) for w in writers}
  return (tff.simulation.datasets.TestClientData(train),
          tff.simulation.datasets.TestClientData(test), train, test)
