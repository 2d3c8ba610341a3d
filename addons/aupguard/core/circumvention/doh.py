"""DNS over HTTPS (RFC 8484, and the JSON API of Google and Cloudflare), recognised by media type or query."""

from __future__ import annotations

import base64
import binascii
import re
import struct

from aupguard.base.urlnorm import NormalizedURL
from aupguard.core.circumvention.decoders import BASE64
from aupguard.core.circumvention.finding import Finding
from aupguard.core.circumvention.urlparts import param_value, query_params

_DNS_MESSAGE = "application/dns-message"
_DNS_JSON = "application/dns-json"
_DOH_JSON_PATHS = re.compile(r"/(?:resolve|dns-query|dns-json)/?\Z")
_DOMAIN_NAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z0-9-]{1,63}\.?\Z")
_RR_TYPES = frozenset(
    [
        "A",
        "NS",
        "CNAME",
        "SOA",
        "PTR",
        "MX",
        "TXT",
        "AAAA",
        "SRV",
        "NAPTR",
        "DS",
        "RRSIG",
        "NSEC",
        "DNSKEY",
        "NSEC3",
        "TLSA",
        "SVCB",
        "HTTPS",
        "CAA",
        "ANY",
        "SPF",
    ]
)
_MAX_DNS_MESSAGE = 4096
_QCLASSES = frozenset({1, 3, 4, 254, 255})


def _media_types(header: str | None) -> set[str]:
    if not header:
        return set()
    return {item.split(";", 1)[0].strip().lower() for item in header[:1024].split(",")}


def _is_dns_query(message: bytes) -> bool:
    """A plausible DNS query: header of a query, then a well-formed first question."""
    if not 17 <= len(message) <= _MAX_DNS_MESSAGE:
        return False
    _, flags, qdcount, ancount, nscount, arcount = struct.unpack("!6H", message[:12])
    opcode = (flags >> 11) & 0xF
    if flags & 0x8000 or opcode not in (0, 1, 2, 4, 5) or flags & 0x40 or flags & 0xF:
        return False
    if not 1 <= qdcount <= 4 or ancount or nscount or arcount > 2:
        return False
    offset, name_length = 12, 0
    while True:
        if offset >= len(message):
            return False
        length = message[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:  # compression pointers cannot appear in the first name
            return False
        name_length += length + 1
        if name_length > 255:
            return False
        offset += length + 1
    if name_length == 0 or offset + 4 > len(message):
        return False
    qtype, qclass = struct.unpack("!2H", message[offset : offset + 4])
    return qtype != 0 and qclass in _QCLASSES


def _dns_param(value: str) -> bool:
    if not BASE64.fullmatch(value) or len(value) > _MAX_DNS_MESSAGE * 4 // 3 + 4:
        return False
    try:
        message = base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    return _is_dns_query(message)


def doh_finding(url: NormalizedURL, content_type: str | None, accept: str | None) -> Finding | None:
    accepted = _media_types(accept)
    if _DNS_MESSAGE in _media_types(content_type) or _DNS_MESSAGE in accepted:
        return Finding("doh", "dns-message", None)
    params = query_params(url.query)
    value = param_value(params, "dns")
    if value is not None and _dns_param(value):
        return Finding("doh", "dns-query-get", None)
    name = param_value(params, "name")
    if name is None:
        return Finding("doh", "dns-json", None) if _DNS_JSON in accepted else None
    if _DNS_JSON in accepted:
        return Finding("doh", "dns-json", None)
    if not _DOMAIN_NAME.match(name):
        return None
    rrtype = param_value(params, "type")
    known_type = rrtype is not None and (
        rrtype.upper() in _RR_TYPES or (rrtype.isdigit() and 0 < int(rrtype[:6]) < 65536)
    )
    if known_type or _DOH_JSON_PATHS.search(url.path):
        return Finding("doh", "dns-json", None)
    return None
