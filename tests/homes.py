"""Archive homes for tests, made as an administrator makes them.

``make_home`` runs ``strongroom init`` and ``strongroom user add`` for the
people asked for.  Each distinct set of people is made once per test run
and copied for every test that asks for it again: key generation and the
Argon2 hash of every password are most of a portal test's set-up, and a
copy is an identical home.  Extra configuration is appended after the
copy, so tests that differ only in their settings share one original.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.harness import strongroom

ADMIN_PASSWORD = "admin password 1"
PASSWORD = "correct horse battery"
BOB = "bob@example.com"
CAROL = "carol@example.com"
ADMIN = "admin@example.com"
USERS = {BOB: "user", CAROL: "user"}

_originals: dict[tuple, Path] = {}
_scratch: Path | None = None


def make_home(where: Path, people: Mapping[str, str] = USERS, config: str = "",
              password: str = PASSWORD) -> Path:
    """Return ``where/home``: a home for example.com with ``people`` ({address: role}).

    Every account's password is ``password``; the administrator's is
    ``ADMIN_PASSWORD``.  ``config`` (TOML text) is appended to config.toml.
    """
    key = (tuple(people.items()), password)
    if key not in _originals:
        _originals[key] = _made(_scratch_dir() / str(len(_originals)), people, password)
    home = Path(where) / "home"
    shutil.copytree(_originals[key], home)
    if config:
        with open(home / "config.toml", "a", encoding="utf-8") as handle:
            handle.write("\n" + config.strip() + "\n")
    return home


def _made(home: Path, people: Mapping[str, str], password: str) -> Path:
    strongroom("init", "--home", str(home), "--domain", "example.com",
               env={"STRONGROOM_ADMIN_PASSWORD": ADMIN_PASSWORD})
    for address, role in people.items():
        strongroom("user", "add", address, "--role", role, "--home", str(home),
                   "--password-stdin", stdin=password + "\n")
    return home


def _scratch_dir() -> Path:
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="strongroom-homes-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def damage(home: Path, key: str, how: str = "flip") -> None:
    """Damage the stored object ``key`` of ``home``.

    ``how`` is "flip" (one bit in the middle), "truncate" (keep the first
    half) or "remove" (the object is gone).
    """
    path = home / "store" / "objects" / key
    if how == "remove":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        del data[len(data) // 2:]
    else:
        assert how == "flip", how
        data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
