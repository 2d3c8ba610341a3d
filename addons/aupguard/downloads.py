"""Act: downloads a group may not make, by file type and by size.

A file's type is judged by its Content-Type and by the extension of the name
it would be saved under (the Content-Disposition filename, else the URL
path's last segment), so renaming a type on one side does not get it through.
The size is checked twice: Content-Length on the response headers, and the
bytes actually streamed, counted without keeping them (`SizeLimit`), since a
server may send no length or lie about it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from .policy import Group


@dataclass(frozen=True, slots=True)
class FileType:
    extensions: frozenset[str]  # lower case, without the dot; may contain dots ("tar.gz")
    content_types: frozenset[str]  # media types, lower case, without parameters


def _type(extensions: str, content_types: str) -> FileType:
    return FileType(frozenset(extensions.split()), frozenset(content_types.split()))


# Keyed by policy.DOWNLOAD_TYPES (a test keeps the two in step). Extensions that ordinary pages
# use in their addresses (.js, .com, .bin) are left out: every web page would trip over them.
FILE_TYPES: dict[str, FileType] = {
    "executable": _type(
        "exe scr pif cpl dll elf run",
        "application/x-msdownload application/x-msdos-program application/x-dosexec application/x-executable "
        "application/x-ms-dos-executable application/vnd.microsoft.portable-executable application/x-elf "
        "application/x-mach-binary application/x-sharedlib",
    ),
    "installer": _type(
        "msi msix msixbundle appx appxbundle msp pkg mpkg deb rpm snap flatpak appimage crx xpi vsix",
        "application/x-msi application/x-ms-installer application/x-msinstaller application/x-ole-storage "
        "application/msix application/appx application/vnd.ms-appx application/x-newton-compatible-pkg "
        "application/vnd.debian.binary-package application/x-debian-package application/x-rpm "
        "application/x-redhat-package-manager application/x-chrome-extension application/x-xpinstall",
    ),
    "disk_image": _type(
        "iso img dmg vhd vhdx vmdk qcow2 ova ovf toast",
        "application/x-iso9660-image application/x-cd-image application/x-apple-diskimage "
        "application/x-raw-disk-image application/x-virtualbox-vhd application/x-vhd application/x-vmdk",
    ),
    "apk": _type("apk apks xapk aab ipa", "application/vnd.android.package-archive application/octet-stream+apk"),
    "torrent": _type("torrent", "application/x-bittorrent"),
    "archive": _type(
        "zip rar 7z tar gz tgz bz2 xz zst cab tar.gz tar.bz2 tar.xz",
        "application/zip application/x-zip-compressed application/vnd.rar application/x-rar-compressed "
        "application/x-7z-compressed application/x-tar application/gzip application/x-gzip "
        "application/x-bzip2 application/x-xz application/zstd application/vnd.ms-cab-compressed",
    ),
    "script": _type(
        "bat cmd ps1 psm1 vbs vbe jse wsf wsh hta sh command reg lnk jar",
        "application/x-bat application/x-msdos-batch application/x-sh application/x-shellscript "
        "application/hta application/x-ms-shortcut application/java-archive application/x-java-archive",
    ),
}
_BY_CONTENT_TYPE = {ct: name for name, kind in FILE_TYPES.items() for ct in kind.content_types}
_BY_EXTENSION = {ext: name for name, kind in FILE_TYPES.items() for ext in kind.extensions}
_LONGEST_EXTENSION = max(ext.count(".") for ext in _BY_EXTENSION) + 1

MAX_NAME = 1024  # a file name longer than this is judged by its first MAX_NAME characters
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([^;]*)", re.IGNORECASE)
_FILENAME = re.compile(r"""filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DownloadBlock:
    """Why a download is refused: the file type or the size, in words for the block page and the incident."""

    reason: str  # "type" | "size"
    detail: str  # e.g. "executable (.exe)" or "250 MB over the limit of 200 MB"


def file_type(content_type: str | None, filename: str | None) -> tuple[str, str] | None:
    """The blockable type of a download and what showed it, e.g. ("executable", ".exe"); None if neither says."""
    if filename:
        name = filename[:MAX_NAME].strip().strip(".").lower()
        parts = name.rsplit("/", 1)[-1].split(".")
        # "setup.tar.gz": try "tar.gz" before "gz"; never the whole name as an extension.
        for count in range(min(_LONGEST_EXTENSION, len(parts) - 1), 0, -1):
            extension = ".".join(parts[-count:])
            found = _BY_EXTENSION.get(extension)
            if found:
                return found, f".{extension}"
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        found = _BY_CONTENT_TYPE.get(media)
        if found:
            return found, media
    return None


def download_name(path: str, content_disposition: str | None) -> str | None:
    """The name the browser would save the file under: Content-Disposition's filename, else the URL path's end."""
    if content_disposition:
        star = _FILENAME_STAR.search(content_disposition)
        if star:  # RFC 6266/5987: charset'language'percent-encoded
            value = star.group(1).strip().strip('"')
            encoded = value.split("'", 2)[-1]
            return urllib.parse.unquote(encoded, errors="replace")
        plain = _FILENAME.search(content_disposition)
        if plain:
            return plain.group(1) if plain.group(1) is not None else plain.group(2).strip()
    segment = path.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    return urllib.parse.unquote(segment, errors="replace") or None


def check_headers(
    group: Group, path: str, content_type: str | None, content_disposition: str | None, content_length: str | None
) -> DownloadBlock | None:
    """Whether a response, known by its headers, is a download `group` may not make.

    A web page (text/html) is judged by an attachment filename only, not by its
    address: a download's landing page is often called "setup.exe" too.
    """
    if group.download_block_types:
        page = (content_type or "").lower().lstrip().startswith("text/html")
        name = download_name("" if page else path, content_disposition)
        found = file_type(content_type, name)
        if found is not None and found[0] in group.download_block_types:
            name, evidence = found
            return DownloadBlock("type", f"{name.replace('_', ' ')} ({evidence})")
    limit = group.max_download_bytes
    if limit is not None and content_length is not None:
        size = _length(content_length)
        if size is not None and size > limit:
            return size_block(size, limit)
    return None


def size_block(size: int, limit: int) -> DownloadBlock:
    return DownloadBlock("size", f"{size:,} bytes is over the limit of {_megabytes(limit)}")


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _length(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 20 else None


class SizeLimit:
    """A mitmproxy `response.stream` callable: passes chunks on, counting, until `limit` bytes have passed.

    The chunk that crosses the limit and everything after it are dropped, not
    kept, and `exceeded(total)` is called once, so the caller can kill the flow
    (the client then sees the connection reset, never a complete file).
    """

    def __init__(self, limit: int, exceeded: Callable[[int], None]):
        self.limit = limit
        self.exceeded = exceeded
        self.total = 0
        self.stopped = False

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        # Nothing to send is [], not b"": mitmproxy would send an empty chunk, which ends a chunked body.
        if self.stopped:
            return []
        self.total += len(chunk)
        if self.total <= self.limit:
            return chunk
        self.stopped = True
        self.exceeded(self.total)
        return []
