"""`tff.simulation.datasets.ClientData` over prepared client data (`pina-clients/1`).

Client ids come from the manifest. A client's dataset reads its shard file lazily
(`tf.data.TFRecordDataset`) and keeps the client's records of one split, so the dataset
function is serializable (usable inside `tf.function` and `dataset_computation`) and
nothing large is embedded in the graph. When called eagerly on validated data
(`create_tf_dataset_for_client`), it slices the in-memory arrays instead (same elements,
far faster than tracing the file-reading pipeline per client). Elements: {'image': uint8 [H, W, C],
'label': int64 []}, in the order written by pina-prepare.
"""
import os
from typing import Tuple

import tensorflow as tf
import tensorflow_federated as tff

from pina_tff.data import readers
from pina_tff.data import schema
from pina_tff.errors import ConfigError


def make_client_data(directory: str, split: str = "train", validate: bool = True
                     ) -> tff.simulation.datasets.ClientData:
  """ClientData of one split (`train` or `test`) of a prepared directory.

  Args:
    directory: output of pina-prepare.
    split: `train` or `test`.
    validate: read every record once and check it against the manifest (DataError on a
      missing / corrupt shard or a mismatch); False checks only the manifest and that
      the shard files exist.
  """
  if split not in schema.SPLITS:
    raise ConfigError(f"split is {split!r}, expected one of {list(schema.SPLITS)}")
  data = readers.load_clients(directory) if validate else None
  manifest = data.manifest if validate else schema.read_manifest(directory,
                                                                  schema.CLIENTS_FORMAT)
  clients = manifest["clients"]
  client_ids = [c["client_id"] for c in clients]
  shard_paths = [os.path.join(os.path.abspath(directory),
                              manifest["shards"][c["shard"]]["path"]) for c in clients]
  image_shape = list(manifest["image_shape"])
  spec = schema.feature_spec("image")

  def serializable_dataset_fn(client_id):
    if data is not None and tf.executing_eagerly():
      # Eager fast path (create_tf_dataset_for_client): slice the validated arrays.
      cid = client_id.numpy().decode() if tf.is_tensor(client_id) else str(client_id)
      x, y = data.train(cid) if split == "train" else data.test(cid)
      return tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
    client_id = tf.convert_to_tensor(client_id, tf.string)
    ids = tf.constant(client_ids, tf.string)
    paths = tf.constant(shard_paths, tf.string)
    path = tf.gather(paths, tf.argmax(tf.cast(tf.equal(ids, client_id), tf.int32)))
    ds = tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, spec))
    ds = ds.filter(lambda ex: tf.logical_and(tf.equal(ex["client_id"], client_id),
                                             tf.equal(ex["split"], split)))
    return ds.map(lambda ex: {
        "image": tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), image_shape),
        "label": ex["label"],
    })

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      client_ids, serializable_dataset_fn)


def make_train_test(directory: str, validate: bool = True
                    ) -> Tuple[tff.simulation.datasets.ClientData,
                               tff.simulation.datasets.ClientData]:
  """(train, test) ClientData of a prepared directory (validated once)."""
  train = make_client_data(directory, "train", validate)
  return train, make_client_data(directory, "test", validate=False)
