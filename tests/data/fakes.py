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


def write_fake_fashion_mnist(directory, num_train=40, num_test=12, compress=True, seed=0):
  """The four Fashion-MNIST IDX files with random 28x28 images; returns the arrays.

  Image i of the train split has pixel [0, 0] = i % 256 and [0, 1] = i // 256 (and test
  image j has [0, 2] = 1 + j % 255), so tests can tell which source example a record is.
  """
  import os  # pylint: disable=g-import-not-at-top
  from pina_tff.data import idx  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  arrays = {}
  for split, n, prefix in (("train", num_train, "train"), ("test", num_test, "t10k")):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, :3] = 0
    if split == "train":
      images[:, 0, 0] = np.arange(n) % 256
      images[:, 0, 1] = np.arange(n) // 256
    else:
      images[:, 0, 2] = 1 + np.arange(n) % 255
    labels = rng.integers(0, 10, n).astype(np.uint8)
    ext = ".gz" if compress else ""
    idx.write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{ext}"), images)
    idx.write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{ext}"), labels)
    arrays[split] = (images, labels)
  return arrays
