"""edge-retina: retinal vision-language foundation models on screening devices.

The device runtime lives in this package (with the device profiles of ``devices``) and never imports
torch; host-side tools live in the sibling packages ``converters`` and ``calibration``.
"""
__version__ = "0.1.0"
