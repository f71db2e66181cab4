"""Fake upstreams that speak the real providers' wire formats on 127.0.0.1."""
