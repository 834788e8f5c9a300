"""Config composition and validation. Imports no torch: the CLI's error path must be instant."""
