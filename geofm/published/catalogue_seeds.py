"""The seeds' own releases in the catalogue: importing this registers their specs and models.

SelectiveMAE ViT-B/16 (OpticalRS-13M), ChannelViT-S/8 (So2Sat, random and hard splits) and
RemoteCLIP (ViT-B-32, ViT-L-14 image towers).
"""

from geofm.published import channelvit_release, remoteclip, selectivemae

__all__ = ["channelvit_release", "remoteclip", "selectivemae"]
