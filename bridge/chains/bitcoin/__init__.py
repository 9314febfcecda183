"""Bitcoin: consensus encodings, BIP143 signing, the regtest devnet node, its JSON-RPC server and
the Bitcoin Core RPC client the bridge uses against both the devnet and a real bitcoind."""
