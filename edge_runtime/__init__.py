"""edge_runtime: retail SKU recognition for Jetson-class carts and shelf cameras."""

__version__ = "0.1.0"
