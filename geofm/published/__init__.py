"""Published remote-sensing foundation models behind geofm's band contract."""

from geofm.published import catalogue
from geofm.published.base import (
    INPUT_UNITS,
    PUBLISHED,
    PublishedEncoder,
    PublishedSpec,
    consume,
    register_published,
)
from geofm.published.load import load_release, read_weights

__all__ = ["INPUT_UNITS", "PUBLISHED", "PublishedEncoder", "PublishedSpec", "catalogue",
           "consume", "load_release", "read_weights", "register_published"]
