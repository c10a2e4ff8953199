"""Fakes of a learning process and a round data source for round-loop tests: the
process adds the sum of the round's values to its (int) state; the source records
every round it serves and returns 10 * round + client id per client."""
import collections

Output = collections.namedtuple("Output", ["state", "metrics"])


class FakeProcess:
  """Adds the sum of the round's values to the state (an int)."""

  def __init__(self, calls):
    self.calls = calls

  def next(self, state, values):
    self.calls.append(("next", state, list(values)))
    return Output(state + sum(values), {"loss": float(sum(values))})


class FakeSource:
  """Records ("data", stage, round, ids[, seeds]) per round it serves."""

  def __init__(self, calls, record_seeds: bool = True):
    self.calls = calls
    self.record_seeds = record_seeds

  def round_data(self, stage, rnd, ids, seeds):
    entry = ("data", stage, rnd, list(ids))
    self.calls.append(entry + ((list(seeds),) if self.record_seeds else ()))
    return [10 * rnd + i for i in ids]

  def close(self):
    pass
