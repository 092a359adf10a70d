"""Hypervisor integrations: map a hypervisor's live-migration lifecycle onto
the announced-migration steps of mbxctl (docs/libvirt.md)."""
