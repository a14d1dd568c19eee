"""Tooling around the product: progress output for the CLI, and the load generator behind `modelswarm load`."""
