"""edge-retina: retinal vision-language foundation models on screening devices.

The device runtime lives in this package and never imports torch; host-side tools live in the
sibling packages ``converters``, ``calibration`` and ``devices``.
"""
__version__ = "0.1.0"
