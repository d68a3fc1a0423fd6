"""Exception types shared by the runtime, the CLI and the host tools.

Every error a user can trigger carries a message that names what went wrong and, where there is
one, what to do about it; the CLI prints the message, never a traceback.
"""
from __future__ import annotations


class EdgeRetinaError(Exception):
    """Base class of every error edge-retina raises on purpose."""


#: Every ``error_code`` a screening result can carry, and what it means: the one list the decoder,
#: the input expansion and README's "Bad input" section (a test compares them) use.
RESULT_ERROR_CODES = {
    "not_found": "the path does not exist",
    "unreadable": "no permission to read the file, or to search a folder on its path",
    "not_a_file": "a directory or special file (FIFO, device) where an image was expected",
    "empty_file": "zero bytes",
    "not_an_image": "no known image signature (or not a path, bytes or an array)",
    "unsupported": "an image format or pixel layout that is not accepted",
    "corrupt": "the decoder failed or warned (damaged or truncated data): never scored",
    "too_large": "above the pixel or file-size limit, checked before decoding",
    "too_small": "a side under the minimum",
    "not_a_photograph": "a DICOM object that is not an ophthalmic photograph (modality, no pixel data)",
    "missing_extra": "reading this format needs an optional extra that is not installed",
    "no_images": "a folder that holds no image files",
    "no_match": "a glob pattern that matched no files",
}


class ImageError(EdgeRetinaError):
    """An input image could not be turned into a model tensor.

    ``code`` is a stable machine-readable reason (it goes into CSV/JSON results); the message is for
    people.
    """

    CODES = tuple(RESULT_ERROR_CODES)

    def __init__(self, code: str, message: str):
        if code not in self.CODES:
            raise ValueError(f"unknown ImageError code {code!r}")
        super().__init__(message)
        self.code = code


def named_once(source: object, message: str, *, shown: object | None = None) -> str:
    """``message`` about ``source`` as one line that names it once, as ``shown`` (default: ``source``):
    an ImageError's message (so a Result's error) already starts with "<source>: ", an input
    problem's may or may not, and a line that also put the name in front would say it twice."""
    return f"{source if shown is None else shown}: {message.removeprefix(f'{source}: ')}"


class BundleError(EdgeRetinaError):
    """A bundle is missing, malformed, or fails verification (a file's sha256, the schema...)."""


class BackendError(EdgeRetinaError):
    """An inference backend is unavailable or failed to load or run an engine."""


class MissingExtraError(EdgeRetinaError):
    """A host-only feature was used without the optional dependencies it needs."""

    def __init__(self, feature: str, extra: str, missing: str):
        super().__init__(
            f"{feature} needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'edge-retina[{extra}]'"
        )
        self.extra = extra
