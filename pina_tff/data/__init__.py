"""pina_tff.data."""
