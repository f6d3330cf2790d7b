# Hostile HTML in a real browser: every fixture of tests/fixtures/hostile is
# archived, opened in headless Chromium on its message page, and must run
# nothing, open no dialog, move neither the page nor its frame, submit no
# form and reach the "remote" origin (a loopback server this test runs)
# not at all until "Show remote content" is clicked, and then only for
# images.

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness import USER_PASSWORD, ArchiveServer
from tests.hostile import KEYWORDS, hostile_messages
from tests.peers.chromium import Chromium, require_chromium

BOB = "bob@example.com"
# Long enough for <meta refresh content="0"> and "1" to have fired.
SETTLE_MS = 1500
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005050200" "5fc8f1d2"
    "0000000049454e44ae426082")
# Fixtures whose HTML has an <img> with a remote source: "Show remote
# content" must then load it, and nothing but images.
REMOTE_IMAGES = {"h06-remote-images.eml": "/pixel.gif", "h09-cid-inline.eml": "/tracker.png",
                 "h10-encoded.eml": "/qp.png"}


class RemoteOrigin:
    """A loopback HTTP server standing in for the internet; it logs every hit.

    It answers each path with something dangerous of the kind asked for
    (a script, a page with a script, an image), so that a load that
    slipped through would also show up as a dialog or a navigation.
    """

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.connections = 0
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                origin.hits.append(f"GET {self.path}")
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                origin.hits.append(f"POST {self.path}")
                self._answer()

            def _answer(self) -> None:
                if self.path.endswith((".png", ".gif", ".webp")):
                    body, kind = PIXEL, "image/png"
                elif self.path.endswith(".js"):
                    body, kind = b"alert('remote script')", "text/javascript"
                else:
                    body, kind = b"<script>alert('remote page')</script>", "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request, client_address) -> bool:
                # Counted before any parsing: a TLS hello (https://) counts too.
                origin.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def remote():
    origin = RemoteOrigin()
    origin.start()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, remote):
    server = ArchiveServer(tmp_path_factory.mktemp("hostile") / "home")
    server.init()
    server.start()
    token = server.add_user(BOB)
    for _, raw in hostile_messages(remote.host):
        server.send(raw, "mallory@elsewhere.example", [BOB])
    assert server.wait_for(token, "*", count=len(KEYWORDS), timeout=30)["total"] == len(
        KEYWORDS)
    server.token = token
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, hostile_server):
    require_chromium()
    chromium = Chromium(downloads=tmp_path_factory.mktemp("downloads"))
    chromium.start()
    page = chromium.page()
    page.goto(hostile_server.base_url + "/login")
    page.get_by_label("Email address").fill(BOB)
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/search")
    yield chromium
    chromium.stop()


class Watch:
    """What one page did: dialogs opened, requests made (with their kind)."""

    def __init__(self, chromium: Chromium, page, remote: RemoteOrigin) -> None:
        self.dialogs: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.remote = remote
        self.page = page
        self.chromium = chromium
        self._handlers = [("dialog", self._dialog), ("request", self._request)]
        for event, handler in self._handlers:
            page.on(event, handler)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _request(self, request) -> None:
        self.requests.append((request.resource_type, request.url))

    def remote_requests(self) -> list[tuple[str, str]]:
        host = self.remote.host
        return [(kind, url) for kind, url in self.requests if f"//{host}" in url]

    def close(self) -> None:
        for event, handler in self._handlers:
            self.page.remove_listener(event, handler)


def message_id(server: ArchiveServer, keyword: str) -> str:
    found = server.search(server.token, keyword)
    assert found["total"] == 1, found
    return found["results"][0]["id"]


def html_frame(page):
    """Return the Frame of the message's sandboxed HTML iframe."""
    return page.locator("iframe.html-frame").element_handle().content_frame()


def assert_nothing_moved(page, url: str, title: str, frame_url: str, watch: Watch) -> None:
    page.wait_for_timeout(SETTLE_MS)
    assert watch.dialogs == []
    assert page.url == url, "the top page was navigated"
    assert page.title() == title, "something rewrote the top page's title"
    assert len(watch.chromium.context.pages) == 1, "a window was opened"
    frame = html_frame(page)
    assert frame.url == frame_url, "the message frame was navigated"
    # The frame's own head has three <meta> of the portal's; the message's
    # body may bring none of these elements.
    assert frame.evaluate("[...document.querySelectorAll("
                          "'script, iframe, frame, object, embed, form, base, meta[http-equiv], "
                          "link, applet, portal, body meta')].map(e => e.outerHTML)") == []


@pytest.mark.parametrize("fixture", sorted(KEYWORDS))
def test_hostile_message_runs_and_loads_nothing(browser, hostile_server, remote, fixture):
    page = browser.page()
    ident = message_id(hostile_server, KEYWORDS[fixture])
    url = f"{hostile_server.base_url}/messages/{ident}"
    before_hits, before_connections = len(remote.hits), remote.connections
    watch = Watch(browser, page, remote)
    try:
        page.goto(url, wait_until="load")
        title = page.title()
        assert KEYWORDS[fixture] in title
        frame = html_frame(page)
        frame_url = frame.url
        assert frame_url.startswith(f"{url}/body.html")
        assert_nothing_moved(page, url, title, frame_url, watch)

        # Press every button and input (a form must not submit) and follow
        # every link that is not a plain web or mail link (a javascript:,
        # data: or relative one must do nothing).  Web links are left alone:
        # following one is the reader's choice, not a leak.
        for element in frame.query_selector_all("button, input, a, area, [onclick]"):
            href = (element.get_attribute("href") or "").strip().lower()
            if href.startswith(("http:", "https:", "//", "mailto:")):
                continue
            if element.is_visible():
                element.click(timeout=2_000, no_wait_after=True)
                page.wait_for_timeout(100)
        assert_nothing_moved(page, url, title, frame_url, watch)
        assert watch.remote_requests() == []
        assert remote.hits[before_hits:] == [] and remote.connections == before_connections

        show = page.get_by_role("link", name="Show remote content")
        if fixture in REMOTE_IMAGES:
            assert show.count() == 1, "remote images but no 'Show remote content'"
        if show.count():
            show.click()
            page.wait_for_url(f"{url}?remote=1")
            page.wait_for_load_state("load")
            frame = html_frame(page)
            assert_nothing_moved(page, f"{url}?remote=1", title, frame.url, watch)
            kinds = {kind for kind, _ in watch.remote_requests()}
            assert kinds <= {"image"}, watch.remote_requests()
            if fixture in REMOTE_IMAGES:
                assert f"GET {REMOTE_IMAGES[fixture]}" in remote.hits[before_hits:]
            assert all(hit.startswith("GET ") for hit in remote.hits[before_hits:])
        assert watch.dialogs == []
    finally:
        watch.close()
