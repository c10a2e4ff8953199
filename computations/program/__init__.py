"""The experiment program (run directory, config, platform managers) and its logic (stages, round loop, program state, release, summary)."""
