"""Exact L2 norm bounds in float32: the clip a sensitivity bound assumes, held bit for
bit (stage-2 client updates: `pina_tff.training.local.clip_rows`; stage-1 sketches:
`pina_tff.privacy.sketch.clip_l2`)."""

import tensorflow as tf

#: Shrink factor of `enforce_norm_bound`'s steps (exact in float32; 8 ulp at 1.0, more
#: than the rounding of a float32 scaling).
_SHRINK = 1.0 - 2.0**-20


def enforce_norm_bound(rows, bound: float, max_steps: int = 64):
  """Rows [..., P] (float32; the last axis is a vector) with L2 norm <= ``bound``
  exactly.

  Privacy: the sensitivity a DP guarantee assumes (S2 per stage-2 update, S1 per
  stage-1 sketch) holds bit for bit, not up to float32 rounding.

  Scaling a row by clip/norm in float32 can leave its norm an ulp or two above the
  clip (about half of the clipped rows do). A row is over the bound when its norm
  computed in float64 from its float32 entries (exact to ~1e-16) or in float32
  (`tf.norm`) exceeds float32(bound); such rows are multiplied by (1 - 2^-20) until
  neither does (one step in practice), and a row still over after ``max_steps`` is
  zeroed. Rows within the bound are returned bit for bit.

  Cost: the over-the-bound test of the current rows is carried through the loop, so
  each version of the rows is tested once (twice per round of the loop before issue
  22, and once more after it), and the final zeroing runs only when a row is left
  over: the same tests on the same rows, so the same result bit for bit."""
  bound32 = tf.constant(bound, tf.float32)
  bound64 = tf.cast(bound32, tf.float64)

  def over(r):
    n64 = tf.sqrt(tf.reduce_sum(tf.square(tf.cast(r, tf.float64)), axis=-1))
    return tf.logical_or(n64 > bound64, tf.norm(r, axis=-1) > bound32)

  def body(i, r, is_over):
    r = tf.where(is_over[..., None], r * _SHRINK, r)
    return i + 1, r, over(r)

  _, rows, is_over = tf.while_loop(
      lambda i, r, is_over: tf.logical_and(i < max_steps, tf.reduce_any(is_over)), body,
      (tf.constant(0), rows, over(rows)))
  # Rows still over are zeroed; when none is (the usual case) the rows pass as they are.
  return tf.cond(tf.reduce_any(is_over),
                 lambda: tf.where(is_over[..., None], tf.zeros_like(rows), rows),
                 lambda: rows)
