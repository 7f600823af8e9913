"""Tests for curate.urls: which URLs are fetchable and how they are normalized."""
import pytest

from curate.urls import MAX_URL_LENGTH, InvalidURL, normalize_url


@pytest.mark.parametrize("url, expected", [
    ("http://example.com/a.jpg", "http://example.com/a.jpg"),
    ("  https://Example.COM/A.jpg \n", "https://example.com/A.jpg"),
    ("HTTP://example.com", "http://example.com"),
    ("http://example.com/a b/c.jpg?q=x y", "http://example.com/a%20b/c.jpg?q=x%20y"),
    ("http://example.com/caf\u00e9.jpg?w=\u00e4", "http://example.com/caf%C3%A9.jpg?w=%C3%A4"),
    ("http://example.com/%E6%97%A5.jpg", "http://example.com/%E6%97%A5.jpg"),  # no double encoding
    ("http://example.com/a%20b%zz/100%", "http://example.com/a%20b%25zz/100%25"),  # lone % fixed
    ("http://m\u00fcnchen.de/x.jpg", "http://xn--mnchen-3ya.de/x.jpg"),
    ("http://\u65e5\u672c.jp/\u753b\u50cf.png", "http://xn--wgv71a.jp/%E7%94%BB%E5%83%8F.png"),
    ("http://example.com:8080/a?b=1&c=2", "http://example.com:8080/a?b=1&c=2"),
    ("http://user:p w@example.com/x", "http://user:p%20w@example.com/x"),
    ("http://[::1]:8000/x.jpg", "http://[::1]:8000/x.jpg"),
    ("http://127.0.0.1:9/x.jpg#frag", "http://127.0.0.1:9/x.jpg"),  # fragment is never sent
    ("http://example.com/a\tb\nc", "http://example.com/abc"),
])
def test_normalizes(url, expected):
    assert normalize_url(url) == expected


def test_normalize_is_idempotent():
    once = normalize_url("http://m\u00fcnchen.de/a b/\u00e9?q=\u00fc v%41")
    assert normalize_url(once) == once


@pytest.mark.parametrize("url, detail", [
    (None, "empty"), ("", "empty"), ("   \t", "empty"),
    ("javascript:alert(1)", "bad_scheme"), ("ftp://example.com/a.jpg", "bad_scheme"),
    ("file:///etc/passwd", "bad_scheme"), ("data:image/png;base64,iVBORw0KGgo=", "bad_scheme"),
    ("example.com/a.jpg", "bad_scheme"), ("//example.com/a.jpg", "bad_scheme"),
    ("http://", "no_host"), ("https:///path", "no_host"),
    ("http://[::1/x", "unparsable"), ("http://example.com:99999/", "unparsable"),
    ("http://example.com:port/", "unparsable"), ("http://exa mple.com/", "unparsable"),
    (42, "unparsable"), (b"http://example.com/", "unparsable"),
    ("http://example.com/" + "a" * MAX_URL_LENGTH, "too_long"),
])
def test_rejects(url, detail):
    with pytest.raises(InvalidURL) as e:
        normalize_url(url)
    assert e.value.detail == detail
    assert isinstance(e.value, ValueError) and str(e.value)


def test_too_long_after_encoding():
    url = "http://example.com/" + "\u00e9" * 500  # 519 chars, 3019 once percent-encoded
    assert len(url) < MAX_URL_LENGTH
    with pytest.raises(InvalidURL) as e:
        normalize_url(url)
    assert e.value.detail == "too_long"
