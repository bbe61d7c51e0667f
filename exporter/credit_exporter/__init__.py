"""credit-exporter: Prometheus metrics for AI platforms that meter usage in credits."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("credit-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
