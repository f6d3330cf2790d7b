"""A cookie-keeping HTTP client for the portal, as a browser without script.

It follows no redirects and keeps cookies by hand, so a test sees every
``Set-Cookie`` the server sends and can replay an old cookie on purpose.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.cookies
import re
import urllib.parse

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclasses.dataclass
class Reply:
    """One HTTP response."""

    status: int
    body: str
    headers: http.client.HTTPMessage

    @property
    def location(self) -> str:
        return urllib.parse.urlsplit(self.headers.get("Location", "")).path

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


class PortalClient:
    """Talk to a portal at ``base_url`` (http://127.0.0.1:PORT)."""

    def __init__(self, base_url: str, user_agent: str = "portal-client/1") -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = {}
        self.user_agent = user_agent
        self.last_page = ""

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str], *, csrf_from: str | None = None) -> Reply:
        """POST a form, adding the CSRF token of ``csrf_from`` (or the last page)."""
        page = self.get(csrf_from).body if csrf_from else self.last_page
        found = CSRF_FIELD.search(page)
        if found and "csrf_token" not in fields:
            fields = {"csrf_token": found.group(1), **fields}
        return self.request("POST", path, urllib.parse.urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"User-Agent": self.user_agent, **(headers or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            reply = Reply(response.status, response.read().decode("utf-8", "replace"),
                          response.headers)
        finally:
            connection.close()
        self._keep_cookies(reply)
        if reply.status == 200:
            self.last_page = reply.body
        return reply

    def sign_in(self, address: str, password: str, **extra: str) -> Reply:
        """Post the sign-in form and return the answer (not followed)."""
        return self.post("/login", {"address": address, "password": password, **extra},
                         csrf_from="/login")

    def sign_out(self) -> Reply:
        return self.post("/logout", {}, csrf_from="/account")

    def _keep_cookies(self, reply: Reply) -> None:
        for header in reply.set_cookies():
            cookie = http.cookies.SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                expired = morsel["expires"] and "1970" in morsel["expires"]
                if expired or morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value


def cookie_attributes(header: str) -> dict[str, str]:
    """Return a Set-Cookie header's attributes, names lower-cased."""
    attributes = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes
