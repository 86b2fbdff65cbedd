"""edgerun.adapters."""
