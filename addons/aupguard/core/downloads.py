"""Act: downloads a group may not make, by file type and by size.

A file's type is judged by its Content-Type and by the extension of the name
it would be saved under (the Content-Disposition filename, else the URL
path's last segment), so renaming a type on one side does not get it through.
The size is checked twice: Content-Length on the response headers, and the
bytes actually streamed, counted without keeping them (proxy.downloads.BodyCheck),
since a server may send no length or lie about it.

A file's first bytes are checked too (`content_type_of`), since a name and a
Content-Type cost nothing to fake: a Windows program served as "homework.txt"
(text/plain) is still an executable. What the first SNIFF_BYTES cannot show is
not seen: a DMG (its "koly" trailer is at the end), or a zip whose program is
not among the entries in the first SNIFF_BYTES. A body the server compressed
(Content-Encoding) is looked at as the browser will save it, decoded (proxy.downloads).
"""

from __future__ import annotations

import re
import struct
import urllib.parse
from dataclasses import dataclass

from aupguard.config.policy import Group


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


def why_blocked(reason: str, detail: str) -> str:
    """The block page's sentence on which it was, the type or the size (`DownloadBlock`'s two fields)."""
    return f"This file was stopped because of its {'size' if reason == 'size' else 'type'}: {detail}."


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


# -- by content ----------------------------------------------------------------------------------------

# How much of a body is looked at: enough for an ISO 9660 volume descriptor ("CD001" at 0x8001).
SNIFF_BYTES = 0x8006
# The types a body's first bytes can show; a group blocking none of them needs no look.
SNIFFED_TYPES = frozenset({"executable", "installer", "disk_image", "apk", "archive", "script", "torrent"})
# Compound File Binary (OLE) root CLSIDs of Windows Installer databases and patches, as stored (little-endian).
# Other CFB files (old .doc/.xls) are not installers.
_MSI_CLSIDS = {bytes.fromhex("84100c000000000000c0000000000046"), bytes.fromhex("86100c000000000000c0000000000046")}
_ZIP_ENTRY = struct.Struct("<4s2xH10xII2H")  # signature, flags, compressed size, size, name length, extra length
# Zip entries that make a zip an Office/ODF/EPUB document, not an archive.
_DOCUMENT_ENTRIES = ("[content_types].xml", "mimetype", "_rels/", "word/", "xl/", "ppt/")


def content_type_of(prefix: bytes) -> list[tuple[str, str]]:
    """The blockable types the first bytes of a body show, with what showed them, e.g. [("executable", "PE program")].

    A zip also yields the types of the entries whose headers are in `prefix`
    (("executable", "setup.exe in a zip")). An MZ header counts only with its
    PE header in place, so a text that happens to start with "MZ" is not a program.
    """
    head = prefix[:8]
    if head.startswith(b"MZ") and len(prefix) >= 0x40:
        (pe_offset,) = struct.unpack_from("<I", prefix, 0x3C)
        if prefix[pe_offset : pe_offset + 4] == b"PE\0\0":
            return [("executable", "Windows program (PE)")]
        return []
    if head.startswith(b"\x7fELF"):
        return [("executable", "ELF program")]
    if head[:4] in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe"):
        return [("executable", "Mac program (Mach-O)")]
    # CAFEBABE is a fat Mach-O binary and a Java class: a fat binary's next word is its (small) number of
    # architectures, a class file's is its version (45 or more).
    if head[:4] == b"\xca\xfe\xba\xbe" and len(head) == 8 and 0 < struct.unpack_from(">I", head, 4)[0] < 30:
        return [("executable", "Mac program (Mach-O)")]
    if head == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" and len(prefix) >= 0x34:
        shift, directory = struct.unpack_from("<H", prefix, 0x1E)[0], struct.unpack_from("<I", prefix, 0x30)[0]
        root = ((directory + 1) << min(shift, 16)) + 0x50  # the root directory entry's CLSID
        return [("installer", "Windows Installer (MSI)")] if prefix[root : root + 16] in _MSI_CLSIDS else []
    if head.startswith(b"xar!"):
        return [("installer", "macOS installer (xar)")]
    if head[:4] == b"\xed\xab\xee\xdb":
        return [("installer", "RPM package")]
    if prefix.startswith(b"!<arch>\ndebian-binary"):
        return [("installer", "Debian package")]
    if head.startswith(b"PK\x03\x04"):
        return _zip_types(prefix)
    if head.startswith(b"Rar!\x1a\x07"):
        return [("archive", "RAR archive")]
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return [("archive", "7z archive")]
    if head.startswith(b"MSCF"):
        return [("archive", "cabinet archive")]
    if prefix.startswith((b"d8:announce", b"d13:announce-list", b"d4:info")):  # a bencoded metainfo dictionary
        return [("torrent", "BitTorrent file")]
    if prefix[0x8001:0x8006] == b"CD001":
        return [("disk_image", "ISO 9660 image")]
    return []


def _zip_types(prefix: bytes) -> list[tuple[str, str]]:
    """A zip's own type and its entries' types, from the local file headers within `prefix`."""
    found: list[tuple[str, str]] = []
    document = False
    offset = 0
    while offset + _ZIP_ENTRY.size <= len(prefix):
        signature, flags, compressed, _size, name_length, extra_length = _ZIP_ENTRY.unpack_from(prefix, offset)
        if signature != b"PK\x03\x04":
            break
        start = offset + _ZIP_ENTRY.size
        if start + name_length > len(prefix):
            break  # a cut name could read as another type ("a.tar.gz" as "a.tar")
        name = prefix[start : start + name_length].decode("utf-8", "replace").lower()
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("androidmanifest.xml", "classes.dex"):
            found.append(("apk", f"Android app ({leaf} in a zip)"))
        elif name == "meta-inf/manifest.mf":
            found.append(("script", "Java archive (JAR)"))
        elif name.startswith(_DOCUMENT_ENTRIES):
            document = True
        else:
            inner = file_type(None, leaf)
            if inner is not None:
                found.append((inner[0], f"{leaf} in a zip"))
        offset = start + name_length + extra_length
        if flags & 0x08:  # sizes follow the data (a data descriptor, as streaming zip writers do): look for the next
            offset = prefix.find(b"PK\x03\x04", offset)
            if offset < 0:
                break
        else:
            offset += compressed
    if not document:
        found.append(("archive", "zip archive"))
    return found


def content_block(blocked_types: frozenset[str], prefix: bytes) -> DownloadBlock | None:
    """Whether the first bytes of a body show a type in `blocked_types`."""
    for name, evidence in content_type_of(prefix):
        if name in blocked_types:
            return DownloadBlock("type", f"{name.replace('_', ' ')} ({evidence})")
    return None
