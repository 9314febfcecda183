"""Fusion Prime: the import root that holds the design card's top-level folders.

`fusion_prime.protocol` is `protocol/`, `fusion_prime.node` is `node/`, and so on
(see `[tool.setuptools.package-dir]` in pyproject.toml).
"""
