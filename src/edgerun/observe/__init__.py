"""edgerun.observe."""
