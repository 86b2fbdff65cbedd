"""``python -m edgerun`` runs the CLI."""

from edgerun.cli import main

main()
