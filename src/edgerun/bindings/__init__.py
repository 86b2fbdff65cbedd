"""edgerun.bindings."""
