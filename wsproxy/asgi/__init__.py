"""The ASGI edge: the only package that imports Starlette."""
