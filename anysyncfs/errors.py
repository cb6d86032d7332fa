"""The one exception hierarchy of anysyncfs.

Every error a user can meet derives from :class:`AnysyncError`, carries a one-line message and an exit code.
The CLI is the only place that turns these into exit codes; the FUSE adapter is the only place that turns them
into errno values. Nothing else catches them to translate.
"""

from __future__ import annotations


class AnysyncError(Exception):
    """Root of every anysyncfs error. ``str(err)`` is a one-line message fit for a user."""

    exit_code: int = 1


class UsageError(AnysyncError):
    """The command line or an argument is wrong."""

    exit_code = 2


class KeyringError(AnysyncError):
    """Something is wrong with the keyring file or the identity."""

    exit_code = 3


class WrongPassphrase(KeyringError):
    """The passphrase does not open the keyring (the file itself is intact)."""

    exit_code = 4


class KeyringCorrupt(KeyringError):
    """The keyring file fails its checksum or has an unknown layout."""

    exit_code = 5


class NotFound(AnysyncError):
    """A space, path, change or blob that was asked for does not exist here."""

    exit_code = 6


class AlreadyExists(AnysyncError):
    """Something that must be new already exists (an identity, a path)."""

    exit_code = 7


class IntegrityError(AnysyncError):
    """Data failed verification: it is malformed, forged or corrupted. Never used, only reported."""

    exit_code = 8


class DecodeError(IntegrityError):
    """Bytes do not decode strictly as the expected format (bad tag, version, length, field or trailing data)."""


class IdMismatch(IntegrityError):
    """Bytes do not hash to the identifier they were asked for or stored under."""


class BadSignature(IntegrityError):
    """An Ed25519 signature does not verify."""


class AuthenticationFailed(IntegrityError):
    """An AES-256-GCM tag or a sealed box does not verify (wrong key or modified ciphertext)."""


class Rejected(AnysyncError):
    """A well-formed, correctly signed change or ACL record that the ACL rules do not allow."""

    exit_code = 9


class PermissionDenied(AnysyncError):
    """This identity may not do what was asked (for example a reader writing)."""

    exit_code = 10


class StoreError(AnysyncError):
    """The local store is unusable (locked, wrong schema version, disk full)."""

    exit_code = 11


class FsckFailed(AnysyncError):
    """``fsck`` found problems."""

    exit_code = 12


class FsError(AnysyncError):
    """A file-system level error with a POSIX errno, raised by the VFS and translated only by the FUSE adapter."""

    exit_code = 13

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or f"errno {errno}")
        self.errno = errno


class TooLarge(AnysyncError):
    """A file would exceed a limit of the format (more chunks than one manifest or one change may list)."""

    exit_code = 13


class PathError(AnysyncError):
    """A path names the wrong kind of thing for what was asked, or holds a name the tree cannot keep."""

    exit_code = 13


class NameTooLong(PathError):
    """A path component is longer than a tree name may be."""


class NotADirectory(PathError):
    """A path goes through, or names, something that is not a directory where a directory is needed."""


class IsADirectory(PathError):
    """A path names a directory where a file is needed."""


class NotARegularFile(PathError):
    """A path names something other than a regular file (a symlink, a device) where file content is needed."""


class ProtocolError(DecodeError):
    """A peer sent bytes that break the wire protocol (bad frame, unknown message, wrong state, over a limit).
    The connection is closed and the peer backed off."""


class NetworkError(AnysyncError):
    """A peer or provider could not be reached, timed out, or closed the connection."""

    exit_code = 14


class Incomplete(AnysyncError):
    """A command did its work on this device, but part of it did not happen everywhere it should: a peer was not
    reached, some content was not fetched, a path stayed pinned. What succeeded is kept; the message says what
    is missing and how to finish it."""

    exit_code = 15


class BlobMissing(NotFound):
    """A blob needed for a read is not on this device (the sync layer may fetch it)."""

    def __init__(self, blob_id: bytes, message: str = "") -> None:
        super().__init__(message or "blob is not on this device")
        self.blob_id = blob_id


class RangesMissing(BlobMissing):
    """Byte ranges of a blob a read needs that are neither in its blob file nor among the verified groups of its
    partial blob: the sync layer may fetch just the 16 KiB groups covering them (protocol.md 70.12) instead of the
    whole blob. ``ranges``: (offset, size) pairs (a read names the header and a few runs of segments)."""

    def __init__(self, blob_id: bytes, ranges: tuple[tuple[int, int], ...], message: str = "") -> None:
        super().__init__(blob_id, message or "byte ranges of a blob are not on this device")
        self.ranges = ranges


class ServiceError(AnysyncError):
    """The service manager (systemd) is not running or refused: a unit was written but not enabled or disabled."""

    exit_code = 16
