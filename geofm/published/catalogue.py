"""Every supported published release: importing this module registers their architectures
(:func:`geofm.models.registry.register_model`) and specs (:data:`geofm.published.PUBLISHED`).

The families' modules import torchgeo only when a model is built, so importing the catalogue
is cheap; ``import geofm`` does not import it.
"""

from geofm.published import copernicusfm, croma, dofa, panopticon, scalemae, ssl4eo

__all__ = ["copernicusfm", "croma", "dofa", "panopticon", "scalemae", "ssl4eo"]
