"""Image building: key material, mkosi trees, signing, release output."""
