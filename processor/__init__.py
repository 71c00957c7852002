"""genesys-typing-processor: keeps Genesys Cloud web-messaging typing indicators truthful."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genesys-typing-processor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

PRODUCT = "genesys-typing-processor"
USER_AGENT = f"{PRODUCT}/{__version__}"

__all__ = ["PRODUCT", "USER_AGENT", "__version__"]
