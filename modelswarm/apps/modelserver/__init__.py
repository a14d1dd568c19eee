"""The HTTP server inside every model image (copied into the image as server.py; standard library only)."""
