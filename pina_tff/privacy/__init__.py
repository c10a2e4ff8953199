"""pina_tff.privacy."""
