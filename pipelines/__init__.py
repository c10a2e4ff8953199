"""absl entry points: read flags, build the library pieces, run them."""
