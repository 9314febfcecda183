"""Wire and API messages (.proto) and the Python code generated from them."""
