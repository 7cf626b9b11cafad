"""Published remote-sensing foundation models behind geofm's band contract."""

from geofm.published.base import (
    INPUT_UNITS,
    PUBLISHED,
    PublishedEncoder,
    PublishedSpec,
    consume,
    register_published,
)

__all__ = ["INPUT_UNITS", "PUBLISHED", "PublishedEncoder", "PublishedSpec", "consume",
           "register_published"]
