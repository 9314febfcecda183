"""One module per zero-knowledge proof of CGGMP21 (eprint 2021/060), each with `prove` and `verify`."""
