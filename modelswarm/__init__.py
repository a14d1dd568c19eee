"""modelswarm: a highly available model-hosting cluster on Docker Swarm, and the tools that roll models out to it."""

__version__ = "0.1.0"
