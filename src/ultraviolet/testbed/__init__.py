"""Booting images for real: QEMU + OVMF Secure Boot + swtpm, from the tools chroot."""
