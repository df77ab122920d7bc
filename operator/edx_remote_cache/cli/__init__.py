"""`edx-remote-cache` subcommands, one module each; `main` dispatches lazily."""
