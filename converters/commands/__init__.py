"""Host-side CLI commands, one module each; ``edge_retina.cli.main`` loads them lazily."""
