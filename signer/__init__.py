"""The wallet-facing signer service, its policy checks and the client SDK."""
