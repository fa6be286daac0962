"""The HTTP face of Ponder."""

from ponder.proxy.app import create_app

__all__ = ["create_app"]
