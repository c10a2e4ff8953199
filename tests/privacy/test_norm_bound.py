"""`norm_bound.enforce_norm_bound` (issue 22 item 3: the over-the-bound test carried
through its loop, each version of the rows tested once) against the rule written out
step by step in eager TF: test every row, shrink the rows over the bound, repeat up
to max_steps times, zero the rows still over. Bit for bit, on rows that need no step,
one step, several steps, and more than max_steps (zeroed), in graph mode as the client
computation runs it."""
import numpy as np
import pytest
import tensorflow as tf

from pina_tff.privacy import norm_bound


def _reference(rows, bound: float, max_steps: int):
  """The rule, one eager step at a time (the same float32/float64 tests)."""
  bound32 = tf.constant(bound, tf.float32)
  bound64 = tf.cast(bound32, tf.float64)

  def over(r):
    n64 = tf.sqrt(tf.reduce_sum(tf.square(tf.cast(r, tf.float64)), axis=-1))
    return (n64 > bound64) | (tf.norm(r, axis=-1) > bound32)

  r = tf.constant(rows)
  steps = 0
  while steps < max_steps and bool(tf.reduce_any(over(r))):
    r = tf.where(over(r)[..., None], r * norm_bound._SHRINK, r)  # pylint: disable=protected-access
    steps += 1
  return tf.where(over(r)[..., None], tf.zeros_like(r), r).numpy(), steps


def _rows(bound: float, very_far: bool = True) -> np.ndarray:
  rng = np.random.default_rng(4)
  raw = rng.standard_normal((300, 257)).astype(np.float32)
  norms = np.linalg.norm(raw, axis=-1, keepdims=True).astype(np.float32)
  scaled = raw * (np.float32(bound) / norms)            # some an ulp or two over
  far = raw[:20] * (np.float32(bound) * np.float32(1 + 2e-6) / norms[:20])  # ~2 steps
  far_out = raw[20:30] * (np.float32(1.5 * bound) / norms[20:30])  # never in 64 steps
  very_far = far_out if very_far else None
  parts = [scaled, 0.5 * scaled, far] + ([very_far] if very_far is not None else [])
  return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("max_steps", [64, 1, 0])
def test_enforce_norm_bound_equals_the_stepwise_rule(max_steps):
  bound = 0.1
  rows = _rows(bound)
  want, steps = _reference(rows, bound, max_steps)
  fn = tf.function(lambda r: norm_bound.enforce_norm_bound(r, bound, max_steps))
  got = fn(tf.constant(rows)).numpy()
  np.testing.assert_array_equal(got, want)
  # The setting exercises the loop: rows fixed in one and in several steps, rows
  # zeroed because they stayed over, rows returned as they were.
  zeroed = ~got.any(axis=-1)
  assert zeroed.sum() >= 10
  assert (got == rows).all(axis=-1).sum() >= 300
  if max_steps == 64:
    assert steps >= 2
    assert ((got != rows).any(axis=-1) & ~zeroed).sum() > 20


def test_enforce_norm_bound_with_no_row_left_over():
  """Every row brought within the bound (the usual case: no final zeroing runs)."""
  bound = 0.1
  rows = _rows(bound, very_far=False)
  want, steps = _reference(rows, bound, 64)
  got = tf.function(lambda r: norm_bound.enforce_norm_bound(r, bound))(
      tf.constant(rows)).numpy()
  np.testing.assert_array_equal(got, want)
  assert 2 <= steps < 64 and got.any(axis=-1).all()
  assert ((got != rows).any(axis=-1)).sum() > 20


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
