"""anysyncfs: an end-to-end encrypted, peer-to-peer synced FUSE filesystem."""

__version__ = "0.1.0"
