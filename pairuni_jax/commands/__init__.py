"""One module per ``pairuni`` subcommand; see ``pairuni_jax.cli``."""
