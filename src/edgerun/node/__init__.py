"""edgerun.node."""
