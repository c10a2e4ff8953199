"""pina_tff.training."""
