"""pina_tff.models."""
