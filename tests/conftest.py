"""Fixtures shared by every test directory."""

# The session-scoped ``nats_server`` fixture (a real JetStream server per xdist worker).
pytest_plugins = ["edgerun.testing.nats"]
