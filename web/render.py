"""Turn an archived HTML body into a document that can do no harm.

Archived HTML is hostile.  Two independent layers keep it harmless:

1. nh3 (the ammonia sanitiser) keeps a list of inert tags and attributes
   and drops everything else - scripts, event handlers, forms, frames,
   objects, ``<base>``, ``<meta>``, ``<style>`` blocks with their
   ``@import``; link targets keep only http, https and mailto; images keep
   only the message's own ``cid:`` parts, rewritten to the portal's inline
   route, and remote images only when the reader asked for them.
2. The frame that shows the result is served with its own
   Content-Security-Policy (:func:`frame_policy`): no script, no form, no
   plugin, no base, images only from this message's inline route, and a
   CSP sandbox; the page embeds it in an ``<iframe sandbox>`` as well.

Either layer alone should hold; the tests check both.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import nh3

# Tags whose content is dropped with them: code, styling that can fetch
# (@import, url()), and head matter that would show up as body text.
DROPPED_WITH_CONTENT = {"script", "style", "title", "noscript", "template", "head"}
EXTRA_TAGS = {"font", "tfoot", "center"}
GENERIC_ATTRIBUTES = {"style", "dir", "lang", "title", "align", "valign", "width",
                      "height", "bgcolor", "border", "cellpadding", "cellspacing"}
LINK_SCHEMES = {"http", "https", "mailto"}
# CSS properties kept in style attributes: layout and typography only.
# Nothing that takes a URL (background, background-image, list-style,
# cursor, content, border-image, filter, mask) and nothing that lifts
# content out of the frame's flow (position).
STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "text-align", "text-decoration", "text-indent", "text-transform",
    "line-height", "letter-spacing", "word-spacing", "white-space", "vertical-align",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-collapse",
    "border-spacing", "border-radius", "width", "height", "max-width", "min-width",
    "max-height", "min-height", "display", "float", "clear", "direction",
    "list-style-type", "table-layout",
}
# A style value with any of these is dropped whole: a URL loader, an old
# IE script hook, or an escape or comment that could spell one in disguise.
_HOSTILE_STYLE = re.compile(r"url\s*\(|image-set|expression|behavior|binding|"
                            r"javascript|@import|\\|/\*|&#?[a-z0-9]", re.IGNORECASE)
_REMOTE = re.compile(r"\s*https?://", re.IGNORECASE)

FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"
# An <img> whose src is an http(s) URL: what "show remote content" would
# let load.  A cheap look at the raw HTML, so the page need not sanitise
# the body twice only to decide whether to offer the choice.
_REMOTE_IMAGE = re.compile(r"<img\b[^>]*?\ssrc\s*=\s*[\"']?\s*https?://", re.IGNORECASE)


def sanitize(html: str, inline_url: Callable[[str], str | None], *,
             remote: bool = False) -> str:
    """Return ``html`` with everything active or remote taken out.

    ``inline_url(cid)`` maps a ``cid:`` reference to the portal URL of
    the message's own image part, or None when there is no such image.
    ``remote`` keeps http(s) images (the reader's explicit choice).
    """
    rewritten: set[str] = set()

    def keep(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "style":
            return None if _HOSTILE_STYLE.search(value) else value
        if tag == "img" and attribute == "src":
            if value.lower().startswith("cid:"):
                url = inline_url(value[4:])
                if url:
                    rewritten.add(url)
                return url
            return value if remote and _REMOTE.match(value) else None
        return value

    def relative(url: str) -> str | None:
        # Only the inline-image URLs made above may be relative; any
        # other relative link would point into the portal itself.
        return url if url in rewritten else None

    cleaner = nh3.Cleaner(
        tags=(nh3.ALLOWED_TAGS | EXTRA_TAGS) - {"area", "map"},
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=_attributes(),
        attribute_filter=keep,
        url_schemes=LINK_SCHEMES | {"cid"},
        url_relative=relative,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        filter_style_properties=STYLE_PROPERTIES,
        strip_comments=True,
    )
    return cleaner.clean(html)


def has_remote_images(html: str) -> bool:
    """Tell whether the HTML has images that only load from elsewhere."""
    return _REMOTE_IMAGE.search(html) is not None


def _attributes() -> dict[str, set[str]]:
    attributes = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
    attributes["*"] = set(GENERIC_ATTRIBUTES)
    attributes["font"] = {"color", "face", "size"}
    attributes["a"] = {"href", "hreflang"}
    for tag in ("blockquote", "q", "del", "ins"):
        attributes[tag] = attributes.get(tag, set()) - {"cite"}
    return attributes


def frame_document(body: str) -> str:
    """Wrap sanitised HTML in the frame's own small document."""
    return ('<!doctype html><html><head><meta charset="utf-8">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "</head><body>" + body + "</body></html>")


def frame_policy(inline_prefix: str, *, remote: bool = False) -> str:
    """Return the Content-Security-Policy of a message's HTML frame.

    ``inline_prefix`` is the absolute URL of the message's inline-image
    route (a CSP path source, so no other message's parts load either).
    Style attributes are allowed inline because :func:`sanitize` has
    already reduced them to plain layout properties.
    """
    images = inline_prefix + (" https: http:" if remote else "")
    return (
        "default-src 'none'; "
        f"img-src {images}; "
        "style-src 'unsafe-inline'; "
        "form-action 'none'; base-uri 'none'; "
        "frame-ancestors 'self'; "
        f"sandbox {FRAME_SANDBOX}"
    )
