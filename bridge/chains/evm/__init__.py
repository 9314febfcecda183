"""EVM chains: a web3.py adapter with reorg-aware log following, EIP-1559 fees and a remotely
signing account, plus a managed ``anvil`` process for local chains."""
