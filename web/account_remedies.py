"""An administrator's remedies for one account: unlock, sign out, reset TOTP.

One code path for the ``strongroom user`` commands and the admin page, so
an unlock from either is the same change, audited the same way: the
operator or administrator as actor, the account's address as target.
"""

from __future__ import annotations

from vault.control import ControlDB
from web.accounts import User


def unlock(control: ControlDB, user: User, actor: str) -> bool:
    """Unlock an account locked by failed sign-ins; False if it was not locked.

    ``Lockout.unlock`` audits ``account.unlocked`` when it unlocks.
    """
    from web.lockout import Lockout

    # The attempt limit plays no part in unlocking.
    return Lockout(control, attempts=1).unlock(user.id, user.address, actor)


def sign_out_everywhere(control: ControlDB, user: User, actor: str) -> int:
    """End every portal session of an account; return how many ended."""
    from web.sessions import end_user_sessions

    ended = end_user_sessions(control, user.id)
    control.audit(actor, "sessions.ended", user.address, sessions=ended)
    return ended


def reset_totp(control: ControlDB, user: User, actor: str) -> bool:
    """Remove an account's second factor; False if it had none."""
    from web.totp import reset_second_factor

    if not reset_second_factor(control, user.id):
        return False
    control.audit(actor, "totp.reset", user.address)
    return True
