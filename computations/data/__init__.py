"""Round data: what a round ships to its TFF clients (resident population layouts or packed shards)."""
