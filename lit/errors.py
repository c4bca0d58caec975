"""Errors a user can fix: one base class, :class:`LitError`.

Everything lit raises for a problem in the user's input (a file, an option, a missing
optional package) is a :class:`LitError`. The command line prints such an error as one
line and exits with status 2; anything else is a bug and keeps its traceback (kornia's
``BaseError`` is the model). Each subclass also derives from the built-in exception that
code outside lit would expect (``ValueError``, ``OSError``, ``ImportError``), so
``except ValueError`` keeps working.

The classes live here, at the bottom of the package, so that every layer can raise them;
the modules that own a file format re-export their own (``lit.features.FeatureFileError``).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError", "DownloadError", "FeatureFileError", "FingerprintError", "ImageReadError",
    "ImageTooLargeError", "ImageTooSmallError", "IndexFileError", "LitError", "MissingDependencyError", "NotFoundError",
    "PipelineError", "StorageError", "UnsafePickleError", "UsageError",
]


class LitError(Exception):
    """A problem the user can fix; the message is one sentence that names the file or the
    value and says what to do.

    Args:
        cli: the same message in the command line's words (naming its options, e.g.
            ``--overwrite`` where the library says ``overwrite=True``); the command line
            prints it instead of the library's message.
    """

    def __init__(self, *args, cli: str | None = None) -> None:
        super().__init__(*args)
        self.cli = cli


class UsageError(LitError, ValueError):
    """A bad argument or option value (out of range, wrong kind, contradictory)."""


class NotFoundError(LitError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingDependencyError(LitError, ImportError):
    """An optional package is not installed; the message says what to install."""


def missing_dependency(what: str, package: str, extra: str | None = None) -> MissingDependencyError:
    """The error for ``what`` needing ``package``: ``pip install 'lit[extra]'`` when an extra
    of lit brings it, else ``pip install package``."""
    hint = f"pip install 'lit[{extra}]'" if extra else f"pip install {package}"
    return MissingDependencyError(f"{what} needs the {package} package, which is not installed: {hint}")


class ImageReadError(LitError, ValueError):
    """An image file cannot be read (missing, not an image, truncated, too large or small)."""


class ImageTooLargeError(ImageReadError):
    """The image decodes to more pixels than allowed."""


class ImageTooSmallError(ImageReadError):
    """The image is too small for the model at any of the requested scales."""


class StorageError(LitError, OSError):
    """A file could not be written: disk full, quota, I/O error, read-only file system. What
    was committed before stays readable; the message says what was kept."""


class DownloadError(LitError, OSError):
    """A download failed or gave a file with the wrong sha256."""


class UnsafePickleError(LitError, ValueError):
    """A pickle asks for something outside the allow-list (it could run code)."""


class CheckpointError(LitError, ValueError):
    """A checkpoint could not be read or does not fit the model."""


class FeatureFileError(LitError, ValueError):
    """A feature file is unreadable, damaged, of another kind, or made by another model."""


class IndexFileError(LitError, ValueError):
    """An index file is unreadable, damaged, of another kind, or inconsistent."""


class PipelineError(LitError, ValueError):
    """Files that do not fit together (mismatched names, missing images, no descriptors)."""


class FingerprintError(PipelineError):
    """Queries, codebook or index come from different models or extraction settings."""
