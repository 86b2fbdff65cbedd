"""edgerun.edge."""
