"""Roles and capabilities: who may do what, decided in one place.

A *capability* is a named permission (``mail.read.any``, ``hold.place``).
A *role* is a set of capabilities; every account has one role, and may be
*granted* extra capabilities one by one (an auditor allowed to export) and
*scoped* to mail domains (a compliance officer for one subsidiary).  Every
check in the archive - portal, API, CLI - asks ``allows``; nothing else
looks at a role's name.

Least privilege by default:

- ``user``: their own mailboxes only;
- ``auditor``: search and read across mailboxes and read the audit trail,
  read-only (no hold, no export unless granted);
- ``compliance``: cases, holds, exports, and the cross-mailbox reading
  they need;
- ``admin``: accounts, policies, keys and settings, and by default no mail
  content at all, not even of the admin's own mailbox.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from vault import VaultError
from vault.control import ControlDB

# Reading one's own mail.
MAIL_OWN = "mail.read.own"
# Searching and reading every mailbox (within the account's domain scope).
MAIL_ANY = "mail.read.any"
CASE_VIEW = "case.view"
CASE_MANAGE = "case.manage"
HOLD_PLACE = "hold.place"
HOLD_RELEASE = "hold.release"
EXPORT_RUN = "export.run"
EXPORT_DOWNLOAD = "export.download"
AUDIT_VIEW = "audit.view"
ACCOUNTS_MANAGE = "accounts.manage"
POLICY_MANAGE = "policy.manage"
KEYS_MANAGE = "keys.manage"
DISPOSITION_RUN = "disposition.run"
# The archive's operational view: catalogue coverage and journal sources.
STATUS_VIEW = "status.view"

CAPABILITIES = (
    MAIL_OWN, MAIL_ANY, CASE_VIEW, CASE_MANAGE, HOLD_PLACE, HOLD_RELEASE,
    EXPORT_RUN, EXPORT_DOWNLOAD, AUDIT_VIEW, ACCOUNTS_MANAGE, POLICY_MANAGE,
    KEYS_MANAGE, DISPOSITION_RUN, STATUS_VIEW,
)

ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    "user": frozenset({MAIL_OWN}),
    "auditor": frozenset({MAIL_OWN, MAIL_ANY, CASE_VIEW, AUDIT_VIEW}),
    "compliance": frozenset({
        MAIL_OWN, MAIL_ANY, CASE_VIEW, CASE_MANAGE, HOLD_PLACE, HOLD_RELEASE,
        EXPORT_RUN, EXPORT_DOWNLOAD, AUDIT_VIEW, DISPOSITION_RUN,
    }),
    "admin": frozenset({ACCOUNTS_MANAGE, POLICY_MANAGE, KEYS_MANAGE,
                        DISPOSITION_RUN, AUDIT_VIEW, STATUS_VIEW}),
}
ROLES = tuple(ROLE_CAPABILITIES)


class PermissionDeniedError(VaultError):
    """The acting account lacks a capability; the message names it."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is acting: an account, its role, grants and domain scope.

    An empty ``domains`` means every domain of the archive.
    """

    address: str
    role: str
    mailboxes: frozenset[str] = frozenset()
    grants: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @property
    def capabilities(self) -> frozenset[str]:
        """Return what the role gives plus what was granted."""
        return ROLE_CAPABILITIES.get(self.role, frozenset()) | self.grants


def allows(principal: Principal, capability: str, *,
           mailboxes: Iterable[str] = ()) -> bool:
    """Tell whether ``principal`` holds ``capability`` over ``mailboxes``.

    With mailboxes named, a scoped account needs at least one of them in
    its domains (a message belongs to all its owners; one in scope is
    enough to make it the account's business).  ``mail.read.own`` is
    satisfied only by the principal's own mailboxes.
    """
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")
    if capability not in principal.capabilities:
        return False
    named = {mailbox.lower() for mailbox in mailboxes}
    if not named:
        return True
    if capability == MAIL_OWN:
        return bool(named & {m.lower() for m in principal.mailboxes})
    return in_scope(principal, named)


def in_scope(principal: Principal, mailboxes: Iterable[str]) -> bool:
    """Tell whether any of ``mailboxes`` is in the principal's domain scope."""
    if not principal.domains:
        return True
    return any(mailbox.rpartition("@")[2] in principal.domains
               for mailbox in mailboxes)


def require(principal: Principal, capability: str, *,
            mailboxes: Iterable[str] = ()) -> None:
    """Raise PermissionDeniedError unless ``allows`` says yes."""
    if not allows(principal, capability, mailboxes=mailboxes):
        raise PermissionDeniedError(
            f"{principal.address} ({principal.role}) may not {capability}")


def load_principal(control: ControlDB, address: str) -> Principal | None:
    """Return the enabled account ``address`` as a Principal, or None."""
    with control.connect() as connection:
        row = connection.execute(
            "SELECT id, address, role FROM users WHERE address = ? AND disabled = 0",
            (address.lower(),)).fetchone()
        if row is None:
            return None
        mailboxes = [r["address"] for r in connection.execute(
            "SELECT address FROM mailboxes WHERE user_id = ?", (row["id"],))]
        grants = [r["capability"] for r in connection.execute(
            "SELECT capability FROM role_grants WHERE address = ?", (row["address"],))]
        domains = [r["domain"] for r in connection.execute(
            "SELECT domain FROM role_scopes WHERE address = ?", (row["address"],))]
    return Principal(str(row["address"]), str(row["role"]), frozenset(mailboxes),
                     frozenset(grants), frozenset(domains))


def grant(control: ControlDB, address: str, capability: str, actor: str) -> None:
    """Give one account one extra capability."""
    if capability not in CAPABILITIES:
        raise PermissionDeniedError(
            f"unknown capability {capability!r}; choose from {', '.join(CAPABILITIES)}")
    with control.connect() as connection:
        connection.execute(
            "INSERT OR IGNORE INTO role_grants (address, capability) VALUES (?, ?)",
            (address.lower(), capability))
    control.audit(actor, "role.granted", address.lower(), capability=capability)


def scope(control: ControlDB, address: str, domain: str, actor: str) -> None:
    """Limit an account's cross-mailbox capabilities to ``domain`` (and others given)."""
    with control.connect() as connection:
        connection.execute(
            "INSERT OR IGNORE INTO role_scopes (address, domain) VALUES (?, ?)",
            (address.lower(), domain.lower()))
    control.audit(actor, "role.scoped", address.lower(), domain=domain.lower())


def set_role(control: ControlDB, address: str, role: str, actor: str) -> None:
    """Change an account's role."""
    if role not in ROLES:
        raise PermissionDeniedError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    with control.connect() as connection:
        changed = connection.execute("UPDATE users SET role = ? WHERE address = ?",
                                     (role, address.lower())).rowcount
    if not changed:
        raise PermissionDeniedError(f"no account for {address.lower()}")
    control.audit(actor, "role.changed", address.lower(), role=role)
