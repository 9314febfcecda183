"""The signer daemon: transport, sessions, storage and operations around `protocol`."""
