"""Site adaptation on the device: referral thresholds recalibrated on a site's labelled photos and
few-shot heads chosen by cross-validation, stored as an overlay in the bundle (numpy only).

- ``thresholds``: the threshold for a target sensitivity, with its bootstrap CI;
- ``heads``: the few-shot heads (zero-shot-initialised linear probe, prototype blend);
- ``selection``: cross-validation per condition, falling back to zero-shot;
- ``fit``: both, for every labelled condition;
- ``overlay``: reading and writing the bundle overlay;
- ``site``: ``adapt_bundle``, from a bundle and a labels CSV to an adapted bundle. It opens a
  Screener, and the Screener reads the overlay through this package: import it from
  ``edge_retina.adapt.site``, not from here, so that the two do not import each other.
"""
from edge_retina.adapt.fit import DEFAULT_TARGET_SENSITIVITY, SiteAdaptation, fit_site_adaptation
from edge_retina.adapt.overlay import bundle_scoring, remove_adaptation
from edge_retina.adapt.selection import METHODS

__all__ = [
    "DEFAULT_TARGET_SENSITIVITY",
    "METHODS",
    "SiteAdaptation",
    "bundle_scoring",
    "fit_site_adaptation",
    "remove_adaptation",
]
