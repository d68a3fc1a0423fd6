"""edge-retina: retinal vision-language foundation models on screening devices.

The device runtime lives in this package and never imports torch. Of our packages it uses only the
device profiles of ``devices``; ``firmware_bridge`` and the host-side tools (``converters``,
``calibration``) use it, never the reverse (pyproject.toml's import-linter contracts, README "Layout").
"""
__version__ = "0.1.0"
#: Log lines on stderr (the bridge's own, and every library's with -v): timestamped, since a device's
#: log is read long after.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
