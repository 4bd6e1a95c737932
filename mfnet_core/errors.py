"""User-facing errors: the CLI prints these as one clear message, never a traceback."""


class MfnetError(Exception):
    """An error the user can act on (bad file, missing model, no face found...)."""


class ModelNotFoundError(MfnetError):
    """The FLAME model (or a side file) could not be found."""


class UnsafePickleError(MfnetError):
    """A pickle asked for something outside the allow-list."""


class PhotoError(MfnetError):
    """A photo could not be read or is unusable."""


class NoFaceError(PhotoError):
    """No face was found in a photo."""


class CancelledError(MfnetError):
    """The user cancelled the run (Ctrl-C / Esc)."""
