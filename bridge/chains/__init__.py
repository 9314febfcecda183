"""Chain adapters for the bridge: an embedded Bitcoin regtest node on libbitcoinkernel with a
Bitcoin Core compatible JSON-RPC façade and client, and EVM adapters over web3.py."""
