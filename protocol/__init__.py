"""The cryptography of Fusion Prime: primitives, zero-knowledge proofs and the CGGMP21
protocols as sans-IO state machines.

"Fig. N" = eprint 2021/060 as numbered before its 2024-10-21 revision, per other implementations (zk/__init__.py).

Nothing here opens a socket, starts a thread, reads a clock or touches a file: every
function takes values and returns values, so the same code runs in tests, in the
in-process runner and inside the signer daemon.
"""
