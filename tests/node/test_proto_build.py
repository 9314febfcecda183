"""The committed generated code must be exactly what proto/build.py produces now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build_module():
    spec = importlib.util.spec_from_file_location("fp_proto_build", ROOT / "proto" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current():
    build = _build_module()
    assert build.stale_files() == [], "proto/generated is stale: run .venv/bin/python proto/build.py"


def test_generation_is_deterministic(tmp_path):
    build = _build_module()
    first = {p.name: p.read_bytes() for p in build.generate(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in build.generate(tmp_path / "b")}
    assert first == second
    assert b"/work/" not in b"".join(first.values()), "absolute checkout paths leaked into generated code"


def test_generated_package_imports_with_relative_imports():
    from fusion_prime.proto.generated import peer_pb2, peer_pb2_grpc

    assert peer_pb2_grpc.peer__pb2 is peer_pb2
    env = peer_pb2.Envelope(session_id=b"s" * 16, phase="sign", round=1, sender="a", receiver="b", sequence=7)
    assert peer_pb2.Envelope.FromString(env.SerializeToString()) == env
