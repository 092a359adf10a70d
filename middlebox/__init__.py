"""mbxd: the per-host middlebox daemon (see docs/middlebox.md)."""
