"""Chain adapters, watchers, mint/burn/withdraw workflows and DvP settlement."""
