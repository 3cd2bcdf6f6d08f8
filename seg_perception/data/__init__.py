"""Data: synthetic street scenes and the Cityscapes on-disk layout."""
