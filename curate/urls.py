"""Validates and normalizes input URLs for fetching: http(s) only, IDNA hosts, percent-encoded path and query."""
from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

MAX_URL_LENGTH = 2048  # chars, before and after encoding: longer URLs are junk in URL lists and break servers
SCHEMES = ("http", "https")

# RFC 3986 characters that may stay literal in each part; '%' is kept because existing %XX escapes are
# valid and must not be encoded twice (a lone '%' is fixed to %25 first, see _escape).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_USERINFO_SAFE = "%!$&'()*+,;=-._~:"
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TAB_NEWLINE = re.compile(r"[\t\r\n]")  # browsers drop these anywhere in a URL (WHATWG URL standard)
_HOST_OK = re.compile(r"^[a-z0-9._-]+$")  # '_' is not RFC-legal in host names but common and resolvable


class InvalidURL(ValueError):
    """A URL that cannot be fetched; `detail`: empty, bad_scheme, no_host, unparsable or too_long."""

    def __init__(self, detail: str, message: str):
        super().__init__(message)
        self.detail = detail


def _escape(part: str, safe: str) -> str:
    """Percent-encodes spaces, non-ASCII (as UTF-8) and other unsafe characters, keeping valid %XX escapes."""
    return quote(_LONE_PERCENT.sub("%25", part), safe=safe)


def _encode_host(host: str, url: str) -> str:
    """Lower-cased ASCII host; non-ASCII labels IDNA-encoded (xn--...); IPv6 literals bracketed."""
    if ":" in host:  # urlsplit already checked the brackets of an IPv6 literal
        return f"[{host}]"
    host = host.rstrip(".") or host
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise InvalidURL("unparsable", f"host cannot be IDNA-encoded ({e}): {url[:100]}") from None
    host = host.lower()
    if not _HOST_OK.match(host):
        raise InvalidURL("unparsable", f"bad characters in host {host[:80]!r}")
    return host


def _netloc(parts, url: str) -> str:
    host = _encode_host(parts.hostname, url)
    try:
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise InvalidURL("unparsable", f"bad port in {url[:100]}") from None
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None:
        user = _escape(parts.username, _USERINFO_SAFE.replace(":", ""))
        if parts.password is not None:
            user += ":" + _escape(parts.password, _USERINFO_SAFE)
        netloc = f"{user}@{netloc}"
    return netloc


def normalize_url(url) -> str:
    """The fetchable form of `url`, or raises InvalidURL with a detail.

    Strips surrounding whitespace (and tabs/newlines inside), lower-cases scheme and host, IDNA-encodes
    the host, percent-encodes spaces and non-ASCII in path and query without double-encoding existing
    %XX escapes, drops the fragment (never sent to a server). Only http and https are accepted.
    """
    if url is None:
        raise InvalidURL("empty", "url is null")
    if not isinstance(url, str):
        raise InvalidURL("unparsable", f"url is not a string: {type(url).__name__}")
    url = _TAB_NEWLINE.sub("", url.strip())
    if not url:
        raise InvalidURL("empty", "url is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL("too_long", f"url has {len(url)} chars (max {MAX_URL_LENGTH})")
    try:
        parts = urlsplit(url)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise InvalidURL("unparsable", f"{e}: {url[:100]}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise InvalidURL("bad_scheme", f"{shown} (only http, https): {url[:100]}")
    if not parts.hostname:
        raise InvalidURL("no_host", f"no host in {url[:100]}")
    out = urlunsplit((scheme, _netloc(parts, url), _escape(parts.path, _PATH_SAFE),
                      _escape(parts.query, _QUERY_SAFE), ""))
    if len(out) > MAX_URL_LENGTH:
        raise InvalidURL("too_long", f"url has {len(out)} chars once encoded (max {MAX_URL_LENGTH})")
    return out
