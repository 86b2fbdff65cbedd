"""edgerun.security."""
