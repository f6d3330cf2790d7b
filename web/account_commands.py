"""``strongroom user unlock | signout | totp-reset | share | unshare``.

Each acts on one account named by address, is audited under the operator
who ran it, and prints what it did.  The admin page (``web.admin``) offers
the same remedies through the same functions (``web.account_remedies``).
"""

from __future__ import annotations

import argparse

from vault.control import ControlDB
from web.accounts import User


def user_unlock(arguments: argparse.Namespace) -> int:
    """Unlock an account locked by failed sign-ins."""
    from web.account_remedies import unlock

    control, user = _account(arguments)
    if unlock(control, user, arguments.actor):
        print(f"Unlocked {user.address}")
    else:
        print(f"{user.address} was not locked")
    return 0


def user_signout(arguments: argparse.Namespace) -> int:
    """End every portal session of an account."""
    from web.account_remedies import sign_out_everywhere

    control, user = _account(arguments)
    ended = sign_out_everywhere(control, user, arguments.actor)
    print(f"Ended {ended} session(s) of {user.address}")
    return 0


def user_totp_reset(arguments: argparse.Namespace) -> int:
    """Remove an account's second factor; it may set up a new one."""
    from web.account_remedies import reset_totp

    control, user = _account(arguments)
    if reset_totp(control, user, arguments.actor):
        print(f"Removed the second factor of {user.address}")
    else:
        print(f"{user.address} had no second factor")
    return 0


def user_share(arguments: argparse.Namespace) -> int:
    """Let an account read a shared mailbox besides its own, or take it back."""
    from web.cli import _accounts, _control, _settings

    settings = _settings(arguments)
    accounts = _accounts(settings, _control(settings))
    change = accounts.share if arguments.share else accounts.unshare
    user = change(arguments.mailbox, arguments.address, arguments.actor)
    print(f"{user.address} now reads {', '.join(sorted(user.mailboxes))}")
    return 0


def add_commands(users: argparse._SubParsersAction, command, actor: str) -> None:
    """Add the commands to the ``user`` group; ``command`` makes each parser."""
    for name, function, help_text in (
            ("unlock", user_unlock, "unlock an account locked by failed sign-ins"),
            ("signout", user_signout, "end every portal session of an account"),
            ("totp-reset", user_totp_reset, "remove an account's second factor")):
        sub = command(name, function, help_text, parent=users)
        sub.add_argument("address")
        sub.add_argument("--actor", default=actor, help="who does it (for the audit)")
    for name, help_text in (
            ("share", "let an account read a shared mailbox too"),
            ("unshare", "take a shared mailbox back from an account")):
        sub = command(name, user_share, help_text, parent=users)
        sub.set_defaults(share=name == "share")
        sub.add_argument("mailbox", help="the archive mailbox, e.g. sales@example.com")
        sub.add_argument("address", help="the account that reads it")
        sub.add_argument("--actor", default=actor, help="who does it (for the audit)")


def _account(arguments: argparse.Namespace) -> tuple[ControlDB, User]:
    from web.cli import _accounts, _control, _settings

    settings = _settings(arguments)
    control = _control(settings)
    return control, _accounts(settings, control).existing(arguments.address)
