"""pina_tff.clustering."""
