"""Chain of custody: sign an export, and check one with nothing but its folder.

Every export folder ends with four control files::

    manifest.json            every file (path, SHA-256, size), every
                             item (message id, where it is, SHA-256 of the
                             original bytes, size, receipt keys, custodians)
                             and every fault: a message the archive could
                             not read and left out (id, reason, receipt
                             keys, custodians)
    custody.json             who exported what, when, from which catalogue
                             state, counts and totals, and the SHA-256 of
                             manifest.json
    custody.sig              Ed25519 signature of custody.json's exact bytes,
                             base64
    export-signing-key.pub   the archive's export public key (PEM)

Editing the manifest changes its SHA-256, which the signed custody record
names; editing the custody record breaks the signature.  A folder signed
with some other key verifies only against that key: recipients should pin
the archive's published fingerprint (``verify-export --fingerprint``).

A folder can be intact and still incomplete: the faults the archive
recorded are part of what it signed, and verification reports them apart
from the faults it finds itself (``VerifyReport.left_out``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

from vault import ConfigError

MANIFEST = "manifest.json"
CUSTODY = "custody.json"
SIGNATURE = "custody.sig"
PUBLIC_KEY = "export-signing-key.pub"
CONTROL_FILES = (MANIFEST, CUSTODY, SIGNATURE, PUBLIC_KEY)
HASH_CHUNK = 1024 * 1024
_FROM_QUOTED = re.compile(rb"^>(>*From )", re.MULTILINE)


def signing_key(path: Path) -> Ed25519PrivateKey:
    """Return the export signing key at ``path``, creating it (mode 0600) if absent."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another export made it first; read theirs
        else:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(f"export signing key {path}: cannot be read ({type(err).__name__})"
                          ) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"export signing key {path}: not an Ed25519 key")
    return loaded


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """Return the PEM of the key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """Return ``SHA256:<hex>`` of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def sign(key: Ed25519PrivateKey, record: bytes) -> bytes:
    """Return the base64 signature file content for a custody record."""
    return base64.b64encode(key.sign(record)) + b"\n"


def file_sha256(path: Path) -> tuple[str, int]:
    """Return the SHA-256 and size of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def mbox_unquote(stored: bytes) -> bytes:
    """Undo mboxrd quoting: one '>' fewer before every quoted "From " line."""
    return _FROM_QUOTED.sub(rb"\1", stored)


@dataclasses.dataclass
class VerifyReport:
    """What checking an export folder found; each fault names its item.

    ``faults`` are what verification found wrong with the folder (missing,
    extra, altered, badly signed).  ``left_out`` are the messages the
    archive itself recorded, when it exported, that it could not read:
    "id: reason", from the signed manifest.
    """

    files: int = 0
    items: int = 0
    fingerprint: str = ""
    faults: list[str] = dataclasses.field(default_factory=list)
    left_out: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        """Tell whether nothing was missing, extra, altered or badly signed."""
        return not self.faults

    @property
    def is_complete(self) -> bool:
        """Tell whether the archive recorded no message as left out."""
        return not self.left_out


def verify_folder(folder: str | Path, *, fingerprint: str = "") -> VerifyReport:
    """Check an export folder against its signed custody record and manifest."""
    root = Path(folder)
    report = VerifyReport()
    if not root.is_dir():
        report.faults.append(f"{root}: not a folder")
        return report
    custody = _signed_custody(root, report, fingerprint)
    try:
        manifest_bytes = (root / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
    except (OSError, ValueError) as err:
        report.faults.append(f"{MANIFEST}: cannot be read ({type(err).__name__})")
        return report
    recorded = manifest.get("faults", [])
    report.left_out = [f"{fault.get('id')}: {fault.get('reason')}" for fault in recorded
                       if isinstance(fault, dict)]
    if custody is not None:
        counted = custody.get("counts", {}).get("faults", 0)
        if counted != len(recorded):
            report.faults.append(f"{MANIFEST}: names {len(recorded)} message(s) left out; "
                                 f"the custody record counts {counted}")
        if custody.get("manifest_sha256") != hashlib.sha256(manifest_bytes).hexdigest():
            report.faults.append(f"{MANIFEST}: edited (its SHA-256 is not the one the "
                                 "signed custody record names)")
        if custody.get("counts", {}).get("messages") != len(manifest.get("items", [])):
            report.faults.append(f"{MANIFEST}: lists {len(manifest.get('items', []))} items; "
                                 "the custody record counts "
                                 f"{custody.get('counts', {}).get('messages')}")
    altered = _check_files(root, manifest.get("files", []), report)
    _check_items(root, manifest.get("items", []), altered, report)
    return report


def _signed_custody(root: Path, report: VerifyReport, pinned: str) -> dict[str, Any] | None:
    try:
        record = (root / CUSTODY).read_bytes()
        signature = base64.b64decode((root / SIGNATURE).read_bytes(), validate=False)
        public_key = serialization.load_pem_public_key((root / PUBLIC_KEY).read_bytes())
    except (OSError, ValueError) as err:
        report.faults.append(f"custody record: cannot be read ({err})")
        return None
    if not isinstance(public_key, Ed25519PublicKey):
        report.faults.append(f"{PUBLIC_KEY}: not an Ed25519 public key")
        return None
    report.fingerprint = fingerprint(public_key)
    if pinned and pinned != report.fingerprint:
        report.faults.append(f"{PUBLIC_KEY}: fingerprint {report.fingerprint} is not the "
                             f"archive's {pinned}")
    try:
        public_key.verify(signature, record)
    except InvalidSignature:
        report.faults.append(f"{CUSTODY}: signature does not verify (the custody record "
                             "was edited, or signed with another key)")
    try:
        parsed: dict[str, Any] = json.loads(record)
    except ValueError:
        report.faults.append(f"{CUSTODY}: not JSON")
        return None
    return parsed


def _check_files(root: Path, listed: list[dict[str, Any]], report: VerifyReport) -> set[str]:
    expected = {entry["path"]: entry for entry in listed}
    present = set(walk_files(root)) - set(CONTROL_FILES)
    altered = set()
    for path in sorted(present - expected.keys()):
        report.faults.append(f"extra file {path}: not in the manifest")
    for path in sorted(expected.keys() - present):
        report.faults.append(f"missing file {path}")
        altered.add(path)
    for path in sorted(present & expected.keys()):
        report.files += 1
        sha256, size = file_sha256(root / path)
        if (sha256, size) != (expected[path]["sha256"], expected[path]["size"]):
            report.faults.append(f"altered file {path}: SHA-256 {sha256} and size {size}, "
                                 f"manifest says {expected[path]['sha256']} and "
                                 f"{expected[path]['size']}")
            altered.add(path)
    return altered


def _check_items(root: Path, items: list[dict[str, Any]], altered: set[str],
                 report: VerifyReport) -> None:
    """Name the messages inside each altered or missing file."""
    by_file: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_file.setdefault(item["path"], []).append(item)
    report.items = len(items)
    for path, contained in sorted(by_file.items()):
        if path not in altered:
            continue
        if not (root / path).is_file():
            for item in contained:
                report.faults.append(f"missing item {item['id']} ({path})")
            continue
        for item, actual in _item_digests(root / path, contained):
            if actual is None:
                report.faults.append(f"missing item {item['id']} ({path} {item['entry']})")
            elif actual != item["sha256"]:
                report.faults.append(f"altered item {item['id']} ({path} "
                                     f"{item['entry']})".replace(" )", ")"))


def _item_digests(path: Path, items: list[dict[str, Any]]
                  ) -> Iterator[tuple[dict[str, Any], str | None]]:
    if path.suffix == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError):
            yield from ((item, "") for item in items)
            return
        with archive:
            names = set(archive.namelist())
            for item in items:
                if item["entry"] not in names:
                    yield item, None
                    continue
                try:
                    yield item, hashlib.sha256(archive.read(item["entry"])).hexdigest()
                except (zipfile.BadZipFile, OSError, ValueError):
                    yield item, ""
    elif path.suffix == ".mbox":
        with open(path, "rb") as handle:
            for item in items:
                handle.seek(item["mbox_offset"])
                stored = handle.read(item["mbox_length"])
                yield item, hashlib.sha256(mbox_unquote(stored)).hexdigest()
    else:
        yield from ((item, file_sha256(path)[0]) for item in items)


def walk_files(root: Path) -> Iterator[str]:
    """Yield the path of every file under ``root``, relative, in sorted order."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(files):
            yield (Path(directory) / name).relative_to(root).as_posix()
