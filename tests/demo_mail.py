"""Demo mail for the browser tests and the screenshots in docs/screenshots.

A fictional firm's ordinary week: a thread about a quarterly budget, a
supplier's HTML newsletter with a remote image (so the message page shows
its "remote content blocked" notice), a spreadsheet sent as an attachment
with a non-ASCII name.  Every person and address is invented, every
domain is a reserved example domain; nothing here is anyone's real mail.
"""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

OWNER = "bob@example.com"
# The attachment of ATTACHMENT_SUBJECT: its name needs RFC 5987 encoding.
ATTACHMENT_NAME = "Budget 2026 – révisé.csv"
ATTACHMENT = (b"line,amount_eur\r\ntravel,12400\r\ntraining,8300\r\n"
              b"software,21950\r\nhardware,17200\r\n")
ATTACHMENT_SUBJECT = "Revised budget for Q2"
NEWSLETTER_SUBJECT = "Harbour Supplies: spring catalogue"
THREAD_SUBJECT = "Quarterly budget review"
# Every demo message carries this word, so one search finds them all.
KEYWORD = "budget"


def _message(sender: str, subject: str, when: dt.datetime, body: str, *,
             html: str | None = None, reply_to: str | None = None,
             ident: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Bob Example <bob@example.com>"
    message["Subject"] = subject
    message["Date"] = format_datetime(when)
    message["Message-ID"] = f"<{ident}@demo.example.com>"
    if reply_to:
        message["In-Reply-To"] = f"<{reply_to}@demo.example.com>"
        message["References"] = f"<{reply_to}@demo.example.com>"
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    return message


def demo_messages() -> list[bytes]:
    """Return the demo messages, oldest first, each addressed to Bob."""
    day = dt.datetime(2026, 3, 2, 9, 12, tzinfo=dt.timezone.utc)
    alice = "Alice Martin <alice@example.com>"
    carol = "Carol Nguyen <carol@example.com>"
    built = [
        _message(alice, THREAD_SUBJECT, day,
                 "Hi Bob,\n\nCan we go through the budget for the second quarter on "
                 "Thursday? Travel is over plan and I would like to move part of it "
                 "to training.\n\nAlice", ident="demo-1"),
        _message(carol, f"Re: {THREAD_SUBJECT}", day + dt.timedelta(hours=3),
                 "Thursday at 10 works for me. I will bring the software renewals; "
                 "the budget line for licences is due in April.\n\nCarol",
                 reply_to="demo-1", ident="demo-2"),
        _message("Harbour Supplies <news@supplies.example.net>", NEWSLETTER_SUBJECT,
                 day + dt.timedelta(days=1, hours=2),
                 "Our spring catalogue is out: office chairs, desks and monitors for "
                 "every budget.",
                 html=("<h2 style=\"color:#1a5276\">Spring catalogue</h2>"
                       "<p><img src=\"http://supplies.example.net/banner.png\" "
                       "alt=\"Spring catalogue banner\" width=\"480\" height=\"120\"></p>"
                       "<p>Office chairs, desks and monitors for every <b>budget</b>.</p>"
                       "<ul><li>Ergonomic chair: 249 EUR</li><li>Standing desk: 499 EUR</li>"
                       "<li>27-inch monitor: 219 EUR</li></ul>"
                       "<p><a href=\"https://supplies.example.net/catalogue\">"
                       "See the catalogue</a></p>"),
                 ident="demo-3"),
    ]
    revised = _message(alice, ATTACHMENT_SUBJECT, day + dt.timedelta(days=2, hours=5),
                       "Bob,\n\nHere is the revised budget after Thursday's review: "
                       "travel down by 3,000 EUR, training up by the same.\n\nAlice",
                       reply_to="demo-2", ident="demo-4")
    revised.add_attachment(ATTACHMENT, maintype="text", subtype="csv",
                           filename=ATTACHMENT_NAME)
    built.append(revised)
    built.append(_message(carol, "Team lunch on Friday", day + dt.timedelta(days=3),
                          "The usual place at 12:30? It fits the team budget.\n\nCarol",
                          ident="demo-5"))
    return [message.as_bytes() for message in built]


def sender_of(raw: bytes) -> str:
    """Return the address of a demo message's From (its envelope sender)."""
    return parseaddr(message_from_bytes(raw)["From"])[1]
