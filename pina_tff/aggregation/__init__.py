"""pina_tff.aggregation."""
