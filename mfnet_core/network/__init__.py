"""The MFNet network (paper sections 3.1-3.3): the network, face crops, checkpoints and its
use as the fit's initialiser (`mfnet reconstruct --weights`, training/)."""
