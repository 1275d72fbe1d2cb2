"""Offline verification of images: open with formats/ only, check every link of the chain."""
