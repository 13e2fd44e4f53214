"""A resumable chat you can watch: an ASGI app on librecache's streams,
several instances behind nginx, one Redis (see README.md)."""
