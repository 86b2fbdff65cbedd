"""edgerun.control."""
