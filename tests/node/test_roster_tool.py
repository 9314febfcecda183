"""`roster export` / `roster add`: operators exchange one self-contained document per node; every
entry is checked (certificate, its SAN against the address, identity key, clashes, fingerprint),
the merge is atomic, and a bad entry changes nothing and gets one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fusion_prime.node.cli import main as cli
from fusion_prime.node.config import RosterEntryDocument, load_config
from fusion_prime.node.material import NodeMaterial
from fusion_prime.node.tls import generate_certificate
from fusion_prime.protocol.identity import PartyIdentity

ADDRESSES = {"node1": "10.77.0.11:7001", "node2": "10.77.0.12:7001", "node3": "signer-3.example.org:7001"}


@pytest.fixture
def three(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """Three operators' folders, each knowing only itself, and each one's exported entry file."""
    configs = {}
    for i, (node_id, address) in enumerate(ADDRESSES.items(), start=1):
        folder = tmp_path / node_id
        assert cli(["init", "--dir", str(folder), "--node-id", node_id, "--index", str(i), "--listen",
                    f"0.0.0.0:{7000 + i}", "--advertise", address, "--key-file", "--level", "test-2048",
                    "--test-mode"]) == 0
        configs[node_id] = folder / "node.toml"
        assert cli(["roster", "export", "--config", str(configs[node_id]), "--out",
                    str(tmp_path / f"{node_id}.entry")]) == 0
    capsys.readouterr()
    return configs


def snapshot(config: Path) -> dict[str, bytes]:
    """Every file of a node folder except its database: what a refused add must not touch."""
    return {str(p.relative_to(config.parent)): p.read_bytes() for p in sorted(config.parent.rglob("*"))
            if p.is_file() and "data" not in p.relative_to(config.parent).parts}


def test_three_operators_merge_each_others_entries(three, tmp_path, capsys):
    entries = {n: tmp_path / f"{n}.entry" for n in three}
    exported = {n: RosterEntryDocument.parse(p.read_text(), str(p)) for n, p in entries.items()}
    for node_id, config in three.items():
        others = [str(entries[n]) for n in three if n != node_id]
        assert cli(["roster", "add", "--config", str(config), *others]) == 0
        out = capsys.readouterr().out
        for other in (n for n in three if n != node_id):
            assert f"added: {other} (index {exported[other].index}, {ADDRESSES[other]})" in out
            assert exported[other].fingerprint in out
        assert "SIGHUP" in out
    rosters = {n: load_config(c).roster for n, c in three.items()}
    for node_id, roster in rosters.items():
        assert sorted((e.node_id, e.index, e.address) for e in roster) == \
            [(n, i, ADDRESSES[n]) for i, n in enumerate(ADDRESSES, start=1)]
        assert roster[0].node_id == node_id  # its own entry first, the added ones after it
        for e in roster:
            assert RosterEntryDocument.of_peer(e).fingerprint == exported[e.node_id].fingerprint
            assert e.identity_public_key == exported[e.node_id].identity_public_key
            assert e.tls_cert == three[node_id].parent / "peers" / f"{e.node_id}.crt"
        NodeMaterial.load(load_config(three[node_id]))  # the trust store builds from the merged roster

    # Adding the same entries again is a no-op: the config is byte-for-byte what it was.
    before = snapshot(three["node1"])
    assert cli(["roster", "add", "--config", str(three["node1"]), str(entries["node2"])]) == 0
    assert "unchanged (already in the roster): node2" in capsys.readouterr().out
    assert snapshot(three["node1"]) == before


def test_an_export_round_trips_and_carries_its_fingerprint(three, tmp_path, capsys):
    assert cli(["roster", "export", "--config", str(three["node2"])]) == 0
    captured = capsys.readouterr()
    doc = RosterEntryDocument.parse(captured.out, "stdout")
    assert (doc.node_id, doc.index, doc.address) == ("node2", 2, ADDRESSES["node2"])
    assert doc.fingerprint in captured.err and doc.fingerprint in captured.out
    assert doc.tls_cert_pem == (three["node2"].parent / "tls.crt").read_bytes()
    assert cli(["roster", "export", "--config", str(three["node2"]), "--out", str(tmp_path / "node2.entry")]) == 2
    assert "already exists" in capsys.readouterr().err


def _edited(path: Path, **fields: str) -> str:
    text = path.read_text()
    for name, value in fields.items():
        text, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", text, flags=re.M)
        assert count == 1, name
    return text


def _bad_entries(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (document text, what the one-line error must say)."""
    e2 = tmp_path / "node2.entry"
    # A certificate swapped in transit: right node id and host, another key.
    foreign_cert = generate_certificate("node2", ["10.77.0.12"])[0].decode().strip()
    node4 = _edited(e2, node_id='"node4"', index="4", address='"10.77.0.14:7001"')
    off_curve = "02" + "00" * 31 + "05"  # x = 5: no point of secp256k1 has it
    # A genuine entry of another node that was set up on node1's host and port.
    same_host = RosterEntryDocument("node4", 4, "10.77.0.11:7001", PartyIdentity.generate().public_key,
                                    generate_certificate("node4", ["10.77.0.11"])[0])
    return {
        "index clash": (_edited(e2, index="1"), "index 1 is already used by roster entry 'node1'"),
        "address clash": (same_host.to_toml(), "address '10.77.0.11:7001' is already used by roster entry 'node1'"),
        "identity key clash": (_edited(e2, identity_public_key=f'"{_key_of(tmp_path / "node1.entry")}"'),
                               "identity_public_key"),
        "certificate names another node": (node4, "the certificate names node 'node2', not 'node4'"),
        "certificate misses the host": (_edited(e2, address='"10.77.0.99:7001"'),
                                        "does not name the address host '10.77.0.99'"),
        "tampered fingerprint": (_edited(e2, tls_cert_sha256='"' + "AB:" * 31 + 'AB"'), "damaged in transit"),
        "certificate swapped under its fingerprint": (
            re.sub(r'tls_cert = """.*?"""', f'tls_cert = """\n{foreign_cert}\n"""', e2.read_text(), flags=re.S),
            "tls_cert_sha256 is not the fingerprint"),
        "unspecified address": (_edited(e2, address='"0.0.0.0:7001"'), "unspecified address"),
        "key off the curve": (_edited(e2, identity_public_key=f'"{off_curve}"'), "not a compressed secp256k1"),
        "not toml": ("this is not a roster entry\n", "not valid TOML"),
        "no table": ('node_id = "node2"\n', "no [roster_entry] table"),
        "broken certificate": (re.sub(r'tls_cert = """.*?"""', 'tls_cert = """\nnot a pem\n"""', e2.read_text(),
                                      flags=re.S), "does not parse"),
    }


def _key_of(path: Path) -> str:
    return RosterEntryDocument.parse(path.read_text(), str(path)).identity_public_key.hex()


def test_every_bad_entry_is_one_line_and_changes_nothing(three, tmp_path, capsys):
    config = three["node1"]
    before = snapshot(config)
    for name, (text, expected) in _bad_entries(tmp_path).items():
        bad = tmp_path / "bad.entry"
        bad.write_text(text)
        assert cli(["roster", "add", "--config", str(config), str(bad)]) == 2, name
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and captured.err.startswith(f"error: {bad}: "), (name, captured.err)
        assert expected in captured.err, (name, captured.err)
        assert "Traceback" not in captured.err and captured.out == "", name
        assert snapshot(config) == before, name
    assert [e.node_id for e in load_config(config).roster] == ["node1"]


def test_a_batch_with_one_bad_entry_adds_none(three, tmp_path, capsys):
    """Two documents for one new node id in one call: the second clashes with the first, and
    the good first one is not added either (all or nothing)."""
    config = three["node1"]
    before = snapshot(config)
    twin = tmp_path / "twin.entry"
    twin.write_text(_edited(tmp_path / "node3.entry", index="7"))
    assert cli(["roster", "add", "--config", str(config), str(tmp_path / "node3.entry"), str(twin)]) == 2
    err = capsys.readouterr().err
    assert "node_id 'node3' is already used by" in err and "node3.entry" in err
    assert snapshot(config) == before
    assert not (config.parent / "peers" / "node3.crt").exists()


def test_the_merge_keeps_the_operators_comments(three, tmp_path, capsys):
    config = three["node1"]
    config.write_text("# operated by alice; call +41 00 000 00 00 before a change\n" + config.read_text())
    assert cli(["roster", "add", "--config", str(config), str(tmp_path / "node2.entry")]) == 0
    assert config.read_text().startswith("# operated by alice")
    assert [e.node_id for e in load_config(config).roster] == ["node1", "node2"]
    assert cli(["roster", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out.splitlines()[-2:]
    assert listing[0].startswith("node1 (this node): index 1, 10.77.0.11:7001")
    assert listing[1].startswith("node2: index 2, 10.77.0.12:7001")
