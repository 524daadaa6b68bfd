"""bankgate: API authentication for payment and banking APIs."""

__version__ = "0.1.0"
