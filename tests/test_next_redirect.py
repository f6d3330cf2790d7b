# After signing in, the reader lands on the page they were sent away from
# (`next=`), but only if it is a relative path of this site: the sign-in
# page must never become an open redirect.

from __future__ import annotations

import datetime as dt

import pyotp
import pytest

from tests.portal_accounts import (BOB, PASSWORD, csrf_token, make_app,  # noqa: F401
                                   portal_app, portal_home, post_form)
from web.next_page import safe_next

MESSAGE_PATH = "/messages/" + "ab" * 32
HOSTILE = [
    "//evil.example/", "///evil.example", "https://evil.example/", "http:evil.example",
    "javascript:alert(1)", "evil.example/path", "/\\evil.example", "\\\\evil.example",
    "/\\/evil.example", "/%2F%2Fevil.example", "/%5Cevil.example", "/\t/evil.example",
    "/\n/evil.example", "/\r\n//evil.example", "/x\x00", "/x\x7f", " /search",
    "/\u2028//evil.example", "/\u00a0", "", "/" + "a" * 2001,
]
SAME_SITE = ["/search", "/search?q=from%3Abob&page=2", MESSAGE_PATH,
             "/messages/x/conversation#top", "/activity?page=3"]


@pytest.mark.parametrize("value", HOSTILE)
def test_paths_that_could_leave_the_site_are_ignored(value):
    assert safe_next(value) is None


@pytest.mark.parametrize("value", SAME_SITE)
def test_relative_paths_of_this_site_are_kept(value):
    assert safe_next(value) == value


def sign_in_at(client, login_path, password=PASSWORD):
    return client.post(login_path, data={"address": BOB, "password": password,
                                         "csrf_token": csrf_token(client, login_path)})


def test_a_reader_sent_to_sign_in_comes_back_where_they_were(portal_app):
    client = portal_app.test_client()
    sent = client.get("/activity?page=1")
    assert sent.status_code == 302
    login_path = sent.headers["Location"]
    assert login_path == "/login?next=%2Factivity%3Fpage%3D1"
    response = sign_in_at(client, login_path)
    assert response.status_code == 302
    assert response.headers["Location"] == "/activity?page=1"
    assert client.get(response.headers["Location"]).status_code == 200
    # Already signed in, the sign-in page forwards to next as well.
    assert client.get("/login?next=/account").headers["Location"] == "/account"


def test_sign_in_ignores_a_next_that_leaves_the_site(portal_app):
    import urllib.parse

    for value in HOSTILE:
        client = portal_app.test_client()
        response = sign_in_at(client, "/login?" + urllib.parse.urlencode({"next": value}))
        assert response.status_code == 302, value
        assert response.headers["Location"] == "/search", value


def test_a_hostile_next_fails_also_when_signed_in_and_in_the_form(portal_app):
    client = portal_app.test_client()
    response = client.post("/login", data={
        "address": BOB, "password": PASSWORD, "next": "//evil.example/",
        "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/search"
    assert client.get("/login?next=https://evil.example/").headers["Location"] == "/search"


def test_next_survives_the_second_factor_step(portal_app):
    client = portal_app.test_client()
    sign_in_at(client, "/login")
    page = client.get("/account/totp").get_data(as_text=True)
    import re
    import urllib.parse

    uri = re.search(r"<code>(otpauth://[^<]+)</code>", page).group(1).replace("&amp;", "&")
    totp = pyotp.TOTP(urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0])
    assert post_form(client, "/account/totp", {"code": totp.now()}).status_code == 302
    client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})

    response = sign_in_at(client, "/login?next=%2Faccount")
    assert response.headers["Location"] == "/login/code"
    step = totp.timecode(dt.datetime.now(dt.timezone.utc)) + 1
    response = post_form(client, "/login/code", {"code": totp.generate_otp(step)})
    assert response.status_code == 302 and response.headers["Location"] == "/account"
