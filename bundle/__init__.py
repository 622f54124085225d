"""serveform.bundle: a service's code — its repository and `files` — as one content-addressed archive.

    from serveform.bundle import archive_service
    code, archive = archive_service(plan, out_dir=Path(".serveform/code"))
    code.sha256, code.archive      # what the plan carries; components ship and unpack it
    unpack(Path(code.archive), code.sha256, Path("/srv/code"))   # checked, then unpacked

Pure Python and git: no Pulumi, gateway or scaler code. `serveform.stacks.services` archives
each compiled service; the components turn `ServicePlan.code` into assets and unpack steps.
"""

from .archive import ARCHIVE_MTIME, DEFAULT_MAX_BYTES, CodeArchive, archive_service, collect, repository_root, write_archive
from .errors import CodeArchiveError, CodeDigestError, CodeTooLargeError
from .unpack import file_sha256, unpack

__all__ = [
    "ARCHIVE_MTIME",
    "DEFAULT_MAX_BYTES",
    "CodeArchive",
    "CodeArchiveError",
    "CodeDigestError",
    "CodeTooLargeError",
    "archive_service",
    "collect",
    "file_sha256",
    "repository_root",
    "unpack",
    "write_archive",
]
