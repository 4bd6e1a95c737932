"""MFNet training: network, self-supervised multi-view losses, datasets, DDP training and
FaceScape-protocol evaluation, on top of mfnet_core (see training/README.md)."""
