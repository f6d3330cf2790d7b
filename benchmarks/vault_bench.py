"""Measure what sealing and storing cost against the primitives beneath them.

Issue #3 asks for these figures, all from one run on one machine:

1. Seal and open throughput for 10 KB, 100 KB, 1 MB and 50 MB messages,
   against AES-256-GCM alone, zlib alone, and zlib then AES-256-GCM (goal:
   sealing 1 MB takes at most 1.25 times as long as zlib then AES-GCM).
   Beside them, the minor page faults per call, the cost of one object
   whatever its size, and the time seal spends cutting plaintext into
   segments before compressing.
2. What the compression choice costs: zlib levels 1 and 6 and, when the
   ``zstandard`` package is importable, zstd level 3 (it is measured, never
   required: the vault seals with zlib only).
3. Durable writes per second through ``LocalWormStore.put`` against a bare
   write, fsync, rename and directory fsync of the same bytes.
4. Peak resident memory while sealing and opening a 100 MB message as
   streams, each in a fresh process (goal: under 64 MiB above the process's
   baseline), and for comparison through the whole-object ``seal`` and
   ``open_sealed`` that ingest and the portal call.

Messages are generated, not read from anywhere: RFC 5322 headers, a text
part of English-like words and a base64 attachment of random bytes (which
stands for an already-compressed PDF or image), from a seeded ``random``.
Every timing is the median of several repetitions after a warm-up call,
with the operations of one comparison interleaved so that load from other
processes falls on all of them alike.  MB is 10^6 bytes; memory is in MiB.

Nothing leaves the machine.  Every file is written under one scratch
directory that the run creates and removes.  Run from the repository root::

    python -m benchmarks.vault_bench [--quick] [--json PATH] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import random
import resource
import secrets
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import sealing as sealing_module
from vault.clock import now
from vault.keys import KEY_BYTES, LocalKeyFile
from vault.sealing import (
    SEGMENT_SIZE,
    ZSTD_LEVEL,
    open_sealed,
    open_stream,
    seal,
    seal_stream,
)
from vault.store import LocalWormStore

import zstandard

# The codec sealing uses, as the baseline sealing is measured against.
_seal_compress = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress
_seal_decompress = zstandard.ZstdDecompressor().decompress

MB = 1_000_000
MIB = 1024 * 1024
THROUGHPUT_SIZES = (10_000, 100_000, 1_000_000, 50_000_000)
STORE_SIZES = (10_000, 100_000)
SEAL_GOAL_RATIO = 1.25
SEAL_GOAL_SIZE = 1_000_000
MEMORY_GOAL_MIB = 64
TEXT_SHARE = 0.4
QUOTED_SHARE = 0.25
READ_CHUNK = 64 * 1024
GENERATED_BLOCK = 256 * 1024
# Messages this large get fewer repetitions: one call already lasts
# seconds, so its median needs less help against noise.
LARGE_MESSAGE = 10_000_000
STREAM_MODES = ("seal_stream", "open_stream")
WHOLE_MODES = ("seal", "open_sealed")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure: the default run, or a quick smoke run."""

    name: str
    sizes: tuple[int, ...]
    repetitions: int
    large_repetitions: int
    sample_seconds: float
    store_repetitions: int
    store_sample_seconds: float
    memory_message_bytes: int
    measure_whole_objects: bool
    trace_over_goal: bool


DEFAULT_PLAN = Plan(
    name="default", sizes=THROUGHPUT_SIZES, repetitions=7,
    large_repetitions=3, sample_seconds=0.1, store_repetitions=5,
    store_sample_seconds=0.4, memory_message_bytes=100 * MB,
    measure_whole_objects=True, trace_over_goal=True,
)
QUICK_PLAN = Plan(
    name="quick", sizes=THROUGHPUT_SIZES[:3], repetitions=5,
    large_repetitions=1, sample_seconds=0.03, store_repetitions=3,
    store_sample_seconds=0.15, memory_message_bytes=100 * MB,
    measure_whole_objects=False, trace_over_goal=False,
)


# Generated messages


_COMMON = """the of and to a in is that for it as was with be by on not this
are or from at which but have an they you were we their has would when if
so no will can more about up out them time into only some could new than
other then do may also like these should well any after over our first two
very just where most know get through back much before go good need
""".split()
_BUSINESS = """invoice meeting attached please regards thanks contract quarterly
review budget schedule deadline client project report forecast shipment order
payment approval draft revision compliance policy retention audit counsel
agreement customer vendor account team update call tomorrow today week
Monday Friday office pricing proposal renewal ticket issue release onboarding
signature delivery warehouse figures revenue margin headcount travel expense
""".split()
_NAMES = """Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj
Olivia Peggy Rupert Sybil Trent Victor Walter Zoë Müller Françoise Søren
""".split()
_SYLLABLES = """ba be bi bo ca co de di do fa fe ga go ha he la le li lo ma me
mi mo na ne no pa pe po ra re ri ro sa se si so ta te ti to va ve vi wa za
ex an en in on un st pr tr gr pl cl
""".split()


@functools.cache
def _vocabulary() -> tuple[list[str], list[float]]:
    # Word frequencies in prose fall off roughly as 1/rank (Zipf), so the
    # common words come first and a long tail of rarer ones follows.
    rng = random.Random(3)
    tail = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4)))
            for _ in range(2500)]
    tail += [f"#{rng.randint(1000, 99999)}" for _ in range(200)]
    tail += [f"2026-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"
             for _ in range(200)]
    tail += [f"${rng.randint(10, 99999):,}.{rng.randint(0, 99):02}"
             for _ in range(200)]
    rng.shuffle(tail)
    words = _COMMON + _BUSINESS + _NAMES + tail
    words += [word + rng.choice(".,;:?") for word in rng.sample(words, 600)]
    ranks = range(1, len(words) + 1)
    return words, list(itertools.accumulate(1 / rank for rank in ranks))


def email_message(size: int, seed: int) -> bytes:
    """Return a generated email of exactly ``size`` bytes."""
    return b"".join(email_pieces(size, seed))


def email_pieces(size: int, seed: int) -> Iterator[bytes]:
    """Yield a generated email of exactly ``size`` bytes, piece by piece.

    The body is multipart/mixed: a text/plain part of TEXT_SHARE of the
    body and a base64 attachment of the rest.  Raises ValueError if
    ``size`` cannot hold the headers.
    """
    rng = random.Random(seed)
    boundary = f"=_bench_{rng.getrandbits(64):016x}"
    head = _headers(rng, boundary)
    text_head = _part_head(boundary, "text/plain; charset=utf-8", "8bit")
    file_head = _part_head(
        boundary, "application/pdf; name=statement.pdf", "base64",
        "Content-Disposition: attachment; filename=statement.pdf\r\n")
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = size - len(head) - len(text_head) - len(file_head) - len(tail)
    if body < 0:
        raise ValueError(f"{size} bytes cannot hold a benchmark message")

    text_size = int(body * TEXT_SHARE)
    yield head + text_head
    yield from _exactly(_text_blocks(rng, text_size), text_size)
    yield file_head
    yield from _exactly(_base64_blocks(rng, body - text_size), body - text_size)
    yield tail


def _headers(rng: random.Random, boundary: str) -> bytes:
    sender, *recipients = (_address(rng) for _ in range(rng.randint(2, 7)))
    lines = [_received(rng, hop) for hop in range(rng.randint(3, 6))]
    signature = base64.b64encode(rng.randbytes(256)).decode()
    lines += [
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;"
        "\r\n\ts=mail2026; h=from:to:subject:date:message-id;\r\n\tbh="
        + base64.b64encode(rng.randbytes(32)).decode() + ";\r\n\tb="
        + "\r\n\t".join(signature[i:i + 72] for i in range(0, 344, 72)),
        f"From: {sender}",
        "To: " + ",\r\n\t".join(recipients),
        "Subject: " + " ".join(rng.choices(_BUSINESS, k=rng.randint(3, 8))),
        f"Date: Thu, {rng.randint(1, 28)} May 2026 {rng.randint(0, 23):02}"
        f":{rng.randint(0, 59):02}:{rng.randint(0, 59):02} +0000",
        f"Message-ID: <{rng.getrandbits(96):024x}@example.org>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def _address(rng: random.Random) -> str:
    first, last = rng.sample(_NAMES, 2)
    return f"{first} {last} <{first.lower()}.{last.lower()}@example.org>"


def _received(rng: random.Random, hop: int) -> str:
    return (f"Received: from mx{hop}.example.net (mx{hop}.example.net "
            f"[192.0.2.{rng.randint(1, 254)}])\r\n\tby mail.example.org "
            f"with ESMTPS id {rng.getrandbits(48):012X};\r\n\t"
            f"Thu, 21 May 2026 10:{hop:02}:{rng.randint(0, 59):02} +0000")


def _part_head(boundary: str, content_type: str, encoding: str,
               extra: str = "") -> bytes:
    return (f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n").encode()


def _exactly(blocks: Iterator[bytes], length: int) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        piece = next(blocks)[:remaining]
        remaining -= len(piece)
        yield piece


def _text_blocks(rng: random.Random, length: int) -> Iterator[bytes]:
    # Paragraphs of 3 to 8 lines of 7 to 13 words; some are quoted replies.
    words, cumulative = _vocabulary()
    block_words = min(length, GENERATED_BLOCK) // 6 + 16
    while True:
        chosen = rng.choices(words, cum_weights=cumulative, k=block_words)
        lines, position = [], 0
        while position < len(chosen):
            quote = "> " if rng.random() < QUOTED_SHARE else ""
            for _ in range(rng.randint(3, 8)):
                count = rng.randint(7, 13)
                lines.append(quote + " ".join(chosen[position:position + count]))
                position += count
            lines.append("")
        yield ("\r\n".join(lines) + "\r\n").encode()


def _base64_blocks(rng: random.Random, length: int) -> Iterator[bytes]:
    # 57 raw bytes make one 76-character line (RFC 2045, section 6.8).
    lines = max(1, min(length, GENERATED_BLOCK) // 78 + 1)
    while True:
        raw = rng.randbytes(57 * lines)
        yield base64.encodebytes(raw).replace(b"\n", b"\r\n")


# Timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call of one operation: the median and every sample.

    ``faults`` is the median count of minor page faults per call: memory
    the allocator gave back to the kernel and that had to be mapped again.
    """

    median: float
    samples: list[float]
    faults: float


def measure(operations: dict[str, Callable[[], object]], repetitions: int,
            sample_seconds: float) -> dict[str, Timing]:
    """Time each operation, interleaved, and return seconds per call.

    Each operation is first called untimed (the warm-up); a second call
    then sets how many calls one sample makes so that it lasts at least
    ``sample_seconds``.  Garbage collection is paused while timing.
    """
    loops = {name: _loops_for(operation, sample_seconds)
             for name, operation in operations.items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in operations}
    with _collector_paused():
        for _ in range(repetitions):
            for name, operation in operations.items():
                samples[name].append(_sample(operation, loops[name]))
    return {name: _summarise(taken) for name, taken in samples.items()}


def _summarise(samples: list[tuple[float, float]]) -> Timing:
    seconds = [taken for taken, _ in samples]
    faults = [count for _, count in samples]
    return Timing(statistics.median(seconds), seconds, statistics.median(faults))


def _loops_for(operation: Callable[[], object], sample_seconds: float) -> int:
    first, _ = _sample(operation, 1)
    if first >= sample_seconds:
        return 1
    second, _ = _sample(operation, 1)
    return max(1, math.ceil(sample_seconds / second))


def _sample(operation: Callable[[], object], loops: int) -> tuple[float, float]:
    # Seconds and minor page faults, each per call.
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(loops):
        operation()
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return seconds / loops, faults / loops


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# 1 and 2: throughput and the compression choice


def bench_throughput(keys: LocalKeyFile, size: int, plan: Plan) -> dict[str, Any]:
    """Measure sealing, opening and their primitives on one message size."""
    message = email_message(size, seed=size)
    object_key = f"messages/{hashlib.sha256(message).hexdigest()}"
    sealed = seal(keys, object_key, message)
    operations = _sealing_operations(keys, object_key, message, sealed)
    codec_operations, compression = _codec_operations(message)
    operations.update(codec_operations)
    repetitions = (plan.large_repetitions if size >= LARGE_MESSAGE
                   else plan.repetitions)
    timings = measure(operations, repetitions, plan.sample_seconds)

    seconds = {name: timing.median for name, timing in timings.items()}
    return {
        "bytes": size,
        "sealed_bytes": len(sealed),
        "repetitions": repetitions,
        "seconds": seconds,
        "mb_per_s": {name: size / MB / taken for name, taken in seconds.items()},
        "samples": {name: timing.samples for name, timing in timings.items()},
        "faults_per_call": {name: timing.faults for name, timing in timings.items()},
        "seal_ratio": seconds["seal"] / seconds["zlib+aesgcm"],
        "seal_ratio_range": _paired_range(timings["seal"], timings["zlib+aesgcm"]),
        "open_ratio": seconds["open"] / seconds["aesgcm+unzlib"],
        "open_ratio_range": _paired_range(timings["open"], timings["aesgcm+unzlib"]),
        "compression": compression,
    }


def _paired_range(measured: Timing, baseline: Timing) -> tuple[float, float]:
    # Samples of one repetition ran back to back, so their ratios show how
    # far the load of other processes moved the median ratio.
    ratios = [mine / theirs for mine, theirs in
              zip(measured.samples, baseline.samples)]
    return min(ratios), max(ratios)


def _sealing_operations(keys: LocalKeyFile, object_key: str, message: bytes,
                        sealed: bytes) -> dict[str, Callable[[], object]]:
    # A throwaway key and a fixed nonce: these ciphertexts protect nothing,
    # they only cost what a real call costs.  The associated data is as
    # long as a sealed object's header and key.
    cipher = AESGCM(secrets.token_bytes(KEY_BYTES))
    nonce = secrets.token_bytes(12)
    associated = secrets.token_bytes(len(object_key) + 80)
    compressed = _seal_compress(message)
    encrypted = cipher.encrypt(nonce, message, associated)
    both = cipher.encrypt(nonce, compressed, associated)
    operations: dict[str, Callable[[], object]] = {
        "seal": lambda: seal(keys, object_key, message),
        "zlib+aesgcm": lambda: cipher.encrypt(
            nonce, _seal_compress(message), associated),
        "aesgcm": lambda: cipher.encrypt(nonce, message, associated),
        "open": lambda: open_sealed(keys, object_key, sealed),
        "aesgcm+unzlib": lambda: _seal_decompress(
            cipher.decrypt(nonce, both, associated)),
        "aesgcm-decrypt": lambda: cipher.decrypt(nonce, encrypted, associated),
    }
    # Only cutting the plaintext into segments, the copies seal makes
    # before it compresses anything; private, so timed only while present.
    chunks = getattr(sealing_module, "segment_views", None)
    segments = getattr(sealing_module, "_segments", None)
    if chunks is not None and segments is not None:
        operations["segmenting"] = lambda: collections.deque(
            segments(chunks(message)), maxlen=0)
    return operations


Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def _codecs() -> dict[str, Codec]:
    codecs: dict[str, Codec] = {}
    for level in (1, 6):
        codecs[f"zlib-{level}"] = (functools.partial(zlib.compress, level=level),
                                   zlib.decompress)
    codecs[f"zstd-{ZSTD_LEVEL}"] = (_seal_compress, _seal_decompress)
    return codecs


def _codec_operations(message: bytes) -> tuple[
        dict[str, Callable[[], object]], dict[str, dict[str, float]]]:
    # One call on the whole message, like the AES-GCM baseline; the ratio
    # also for the message cut into sealing's segments, each compressed
    # alone, which is what a sealed object would hold.
    operations: dict[str, Callable[[], object]] = {}
    ratios = {}
    for name, (compress, decompress) in _codecs().items():
        frame = compress(message)
        operations[name] = functools.partial(compress, message)
        operations[f"un{name}"] = functools.partial(decompress, frame)
        segmented = sum(len(compress(message[start:start + SEGMENT_SIZE]))
                        for start in range(0, len(message), SEGMENT_SIZE))
        ratios[name] = {"whole": len(message) / len(frame),
                        "segmented": len(message) / segmented}
    return operations, ratios


def bench_fixed_cost(keys: LocalKeyFile, plan: Plan) -> dict[str, float]:
    """Measure, in microseconds, what one object costs whatever its size."""
    object_key = "messages/empty"
    sealed = seal(keys, object_key, b"")
    timings = measure({
        "seal": lambda: seal(keys, object_key, b""),
        "open": lambda: open_sealed(keys, object_key, sealed),
        "key_wrap": lambda: keys.wrap(secrets.token_bytes(KEY_BYTES)),
        "compress_nothing": lambda: _seal_compress(b""),
    }, plan.repetitions, plan.sample_seconds)
    return {name: timing.median * 1e6 for name, timing in timings.items()}


# 3: durable writes


def bench_store(keys: LocalKeyFile, scratch: Path, plan: Plan) -> list[dict[str, Any]]:
    """Measure LocalWormStore.put against a bare durable write, per size."""
    store = LocalWormStore(scratch / "store")
    directory = scratch / "store" / "objects" / "messages"
    retain_until = now() + dt.timedelta(days=365)
    results = []
    for size in STORE_SIZES:
        sealed = seal(keys, "messages/bench", email_message(size, seed=size + 1))

        def put() -> None:
            store.put(f"messages/{secrets.token_hex(32)}", sealed,
                      retain_until=retain_until)

        def write() -> None:
            write_durably(directory, secrets.token_hex(32), sealed)

        timings = measure({"put": put, "raw": write}, plan.store_repetitions,
                          plan.store_sample_seconds)
        # Counted after the warm-up, once the key's directories exist.
        with _counting_fsyncs() as fsyncs:
            put()
        results.append({
            "bytes": size, "sealed_bytes": len(sealed),
            "put_per_s": 1 / timings["put"].median,
            "raw_per_s": 1 / timings["raw"].median,
            "ratio": timings["raw"].median / timings["put"].median,
            "fsyncs_per_put": dict(fsyncs),
            "samples": {name: timing.samples for name, timing in timings.items()},
        })
    return results


def write_durably(directory: Path, name: str, data: bytes) -> None:
    """Write, fsync, rename into place and fsync the directory: the baseline."""
    scratch = directory / f".{name}.part"
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.rename(scratch, directory / name)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _counting_fsyncs() -> Iterator[collections.Counter[str]]:
    # Counts what one put asks of the disk; os.fsync is looked up on the
    # module at each call, so the store sees this wrapper.
    counts: collections.Counter[str] = collections.Counter()
    real_fsync = os.fsync

    def counting(fd: Any) -> None:  # os.fsync's own parameter name
        is_directory = stat.S_ISDIR(os.fstat(fd).st_mode)
        counts["directory" if is_directory else "file"] += 1
        real_fsync(fd)

    os.fsync = counting
    try:
        yield counts
    finally:
        os.fsync = real_fsync


# 4: peak memory, each measurement in a fresh process


def bench_memory(scratch: Path, key_path: Path, plan: Plan) -> list[dict[str, Any]]:
    """Measure peak RSS of sealing and opening one large message."""
    plaintext = scratch / "large.eml"
    digest = write_message_file(plaintext, plan.memory_message_bytes, seed=7)
    object_key = f"messages/{digest}"
    sealed, opened = scratch / "large.sealed", scratch / "large.opened"
    runs: list[tuple[str, Path, Path | None]] = [
        ("seal_stream", plaintext, sealed), ("open_stream", sealed, opened)]
    if plan.measure_whole_objects:
        runs += [("seal", plaintext, None), ("open_sealed", sealed, None)]

    results = []
    for mode, source, target in runs:
        result = _run_child(mode, object_key, key_path, source, target, False)
        result["message_bytes"] = plan.memory_message_bytes
        if plan.trace_over_goal and result["above_baseline_mib"] >= MEMORY_GOAL_MIB:
            traced = _run_child(mode, object_key, key_path, source, target, True)
            result["traced_peak_mib"] = traced["traced_peak_mib"]
        results.append(result)
    if _file_sha256(opened) != digest:
        raise RuntimeError("open_stream did not give back the sealed message")
    return results


def write_message_file(path: Path, size: int, seed: int) -> str:
    """Write a generated message to ``path``; return its SHA-256 in hex."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for piece in email_pieces(size, seed):
            digest.update(piece)
            handle.write(piece)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run_child(mode: str, object_key: str, key_path: Path, source: Path,
               target: Path | None, traced: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.vault_bench", "--memory-child",
               mode, object_key, str(key_path), str(source), str(target or "-")]
    if traced:
        command.append("--traced")
    finished = subprocess.run(command, cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"measuring {mode} failed:\n{finished.stderr}")
    result: dict[str, Any] = json.loads(finished.stdout)
    return result


def memory_child(mode: str, object_key: str, key_path: str, source: str,
                 target: str, traced: bool) -> dict[str, Any]:
    """Run one sealing operation in this process and report its memory.

    A whole-object mode reads its input before the baseline is taken, so
    the figure is what sealing or opening adds on top of holding it.
    """
    keys = LocalKeyFile(Path(key_path))
    whole = Path(source).read_bytes() if mode in WHOLE_MODES else b""
    is_peak_reset = _reset_peak()
    baseline_kib, _ = _memory_kib()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    _run_operation(mode, keys, object_key, source, target, whole)
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
    _, peak_kib = _memory_kib()
    return {
        "operation": mode, "input_bytes": os.path.getsize(source),
        "seconds": seconds, "baseline_mib": baseline_kib / 1024,
        "peak_mib": peak_kib / 1024,
        "above_baseline_mib": (peak_kib - baseline_kib) / 1024,
        "is_peak_reset": is_peak_reset,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "traced_peak_mib": None if traced_peak is None else traced_peak / MIB,
    }


def _run_operation(mode: str, keys: LocalKeyFile, object_key: str, source: str,
                   target: str, whole: bytes) -> None:
    if mode == "seal":
        seal(keys, object_key, whole)
    elif mode == "open_sealed":
        open_sealed(keys, object_key, whole)
    else:
        with open(source, "rb") as reader, open(target, "wb") as writer:
            if mode == "seal_stream":
                chunks = iter(lambda: reader.read(READ_CHUNK), b"")
                writer.writelines(seal_stream(keys, object_key, chunks))
            else:
                writer.writelines(open_stream(keys, object_key, reader))


def _reset_peak() -> bool:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+),
    # so the peak covers only what follows, not the imports.
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _memory_kib() -> tuple[int, int]:
    # (VmRSS, VmHWM) in KiB; without /proc, the lifetime peak for both.
    try:
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return (int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0]))
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak, peak


# The run and its report


def run(plan: Plan, scratch: Path) -> dict[str, Any]:
    """Take every measurement of ``plan`` with files under ``scratch``."""
    key_path = scratch / "keys" / "kek.json"
    keys = LocalKeyFile.create(key_path)
    report: dict[str, Any] = {"machine": describe_machine(scratch),
                              "plan": dataclasses.asdict(plan)}
    report["throughput"] = []
    for size in plan.sizes:
        _progress(f"sealing and compressing {_size_label(size)} messages")
        report["throughput"].append(bench_throughput(keys, size, plan))
    report["fixed_cost_us"] = bench_fixed_cost(keys, plan)
    _progress("writing to the local store")
    report["store"] = bench_store(keys, scratch, plan)
    _progress(f"peak memory for {_size_label(plan.memory_message_bytes)}")
    report["memory"] = bench_memory(scratch, key_path, plan)
    report["goals"] = judge_goals(report)
    return report


def describe_machine(scratch: Path) -> dict[str, Any]:
    """Return what the figures depend on: versions, CPU, load, filesystem."""
    from cryptography.hazmat.backends.openssl import backend

    return {
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "zstandard": _zstandard_version(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "scratch_filesystem": _filesystem_type(scratch),
    }


def judge_goals(report: dict[str, Any]) -> dict[str, Any]:
    """Compare the figures with the goals issue #3 sets."""
    goals: dict[str, Any] = {}
    for row in report["throughput"]:
        if row["bytes"] == SEAL_GOAL_SIZE:
            goals["seal_ratio_at_1MB"] = {
                "value": row["seal_ratio"], "goal": f"<= {SEAL_GOAL_RATIO}",
                "is_met": row["seal_ratio"] <= SEAL_GOAL_RATIO}
    for row in report["memory"]:
        if row["operation"] in STREAM_MODES:
            goals[f"{row['operation']}_above_baseline_mib"] = {
                "value": row["above_baseline_mib"], "goal": f"< {MEMORY_GOAL_MIB}",
                "message_bytes": row["message_bytes"],
                "is_met": row["above_baseline_mib"] < MEMORY_GOAL_MIB}
    return goals


def _zstandard_version() -> str:
    library = ".".join(map(str, zstandard.ZSTD_VERSION))
    return f"{zstandard.__version__} (libzstd {library})"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _filesystem_type(path: Path) -> str:
    # The longest mount point above ``path`` names its filesystem; on
    # tmpfs an fsync costs nothing and the store figures mean little.
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/self/mounts") as handle:
            for line in handle:
                mount_point, fs_type = line.split()[1:3]
                inside = str(path.resolve()).startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) > len(best):
                    best, kind = mount_point, fs_type
    return kind


def print_report(report: dict[str, Any]) -> None:
    """Print the report as tables."""
    machine = report["machine"]
    print(f"Strongroom vault benchmark ({report['plan']['name']} run, "
          f"{report['seconds']:.0f} s)")
    print(f"Python {machine['python']}, cryptography {machine['cryptography']}, "
          f"{machine['openssl']}, zlib {machine['zlib']}, "
          f"zstandard {machine['zstandard'] or 'not installed'}")
    print(f"{machine['cpu']} x{machine['cpus']}; load average "
          f"{_load(machine['load_average_at_start'])} at start, "
          f"{_load(machine['load_average_at_end'])} at end; "
          f"scratch on {machine['scratch_filesystem']}")
    print("MB = 10^6 bytes; throughput counts plaintext bytes; medians of "
          "interleaved repetitions after a warm-up.")
    _print_sealing(report["throughput"])
    _print_opening(report["throughput"])
    _print_faults(report["throughput"])
    _print_fixed_cost(report["fixed_cost_us"])
    _print_compression(report["throughput"])
    _print_store(report["store"])
    _print_memory(report["memory"])
    _print_goals(report["goals"])


def _print_sealing(rows: list[dict[str, Any]]) -> None:
    table = [[_size_label(row["bytes"]), str(row["repetitions"]),
              *(_rate(row["mb_per_s"][name]) for name in
                ("seal", "zlib+aesgcm", f"zstd-{ZSTD_LEVEL}", "aesgcm")),
              f"{row['seal_ratio']:.2f} ({_range(row['seal_ratio_range'])})",
              f"{row['sealed_bytes'] / row['bytes']:.1%}",
              _rate(row["mb_per_s"]["segmenting"])
              if "segmenting" in row["mb_per_s"] else "-"] for row in rows]
    _print_table(
        "1. Sealing, MB/s", ["message", "reps", "seal", "zstd+GCM",
                             f"zstd-{ZSTD_LEVEL}", "AES-GCM",
                             "seal/(zstd+GCM) (range)", "sealed size",
                             "segmenting"], table)


def _print_opening(rows: list[dict[str, Any]]) -> None:
    table = [[_size_label(row["bytes"]),
              *(_rate(row["mb_per_s"][name]) for name in
                ("open", "aesgcm+unzlib", f"unzstd-{ZSTD_LEVEL}",
                 "aesgcm-decrypt")),
              f"{row['open_ratio']:.2f} ({_range(row['open_ratio_range'])})"]
             for row in rows]
    _print_table("   Opening, MB/s", ["message", "open", "GCM+unzstd",
                                      "inflate", "AES-GCM",
                                      "open/(GCM+unzstd) (range)"],
                 table)


def _print_faults(rows: list[dict[str, Any]]) -> None:
    names = ("seal", "zlib+aesgcm", "open", "aesgcm+unzlib")
    table = [[_size_label(row["bytes"]),
              *(f"{row['faults_per_call'][name]:,.0f}" for name in names)]
             for row in rows]
    _print_table("   Minor page faults per call (memory returned to the kernel "
                 "and mapped again)",
                 ["message", "seal", "zstd+GCM", "open", "GCM+unzstd"], table)


def _print_fixed_cost(micros: dict[str, float]) -> None:
    print(f"\n   Per object, whatever its size (an empty message): seal "
          f"{micros['seal']:.0f} us, open {micros['open']:.0f} us; of which "
          f"key wrap {micros['key_wrap']:.0f} us and zstd-{ZSTD_LEVEL} "
          f"of nothing {micros['compress_nothing']:.0f} us")


def _print_compression(rows: list[dict[str, Any]]) -> None:
    table = []
    for row in rows:
        for codec, ratios in row["compression"].items():
            table.append([_size_label(row["bytes"]), codec,
                          _rate(row["mb_per_s"][codec]),
                          _rate(row["mb_per_s"][f"un{codec}"]),
                          f"{ratios['whole']:.2f}", f"{ratios['segmented']:.2f}"])
    _print_table("2. Compression (one call on the whole message; ratio = "
                 "plain/compressed, also per 1 MiB segment)",
                 ["message", "codec", "compress MB/s", "decompress MB/s",
                  "ratio", "ratio/segment"], table)


def _print_store(rows: list[dict[str, Any]]) -> None:
    table = [[f"{_size_label(row['bytes'])} ({row['sealed_bytes']:,} B sealed)",
              f"{row['put_per_s']:.0f}", f"{row['raw_per_s']:.0f}",
              f"{row['ratio']:.2f}",
              ", ".join(f"{count} {kind}" for kind, count in
                        sorted(row["fsyncs_per_put"].items()))] for row in rows]
    _print_table("3. Durable writes per second (raw = write, fsync, rename, "
                 "directory fsync: 1 file + 1 directory fsync)",
                 ["object", "put/s", "raw/s", "put/raw", "fsyncs in one put"],
                 table)


def _print_memory(rows: list[dict[str, Any]]) -> None:
    table = [[row["operation"], _size_label(row["message_bytes"]),
              f"{row['baseline_mib']:.1f}", f"{row['peak_mib']:.1f}",
              f"{row['above_baseline_mib']:.1f}",
              "-" if row.get("traced_peak_mib") is None
              else f"{row['traced_peak_mib']:.1f}",
              f"{row['seconds']:.1f}"] for row in rows]
    _print_table(f"4. Peak RSS, MiB, each in a fresh process (goal for the "
                 f"streams: < {MEMORY_GOAL_MIB} above baseline)",
                 ["operation", "message", "baseline", "peak", "above",
                  "tracemalloc peak", "seconds"], table)


def _print_goals(goals: dict[str, Any]) -> None:
    print("\nGoals (issue #3)")
    for name, goal in goals.items():
        verdict = "met" if goal["is_met"] else "NOT MET"
        print(f"  {name}: {goal['value']:.2f} (goal {goal['goal']}): {verdict}")


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for cells in [header, *rows]:
        print("  " + "  ".join(cell.rjust(width) if index else cell.ljust(width)
                               for index, (cell, width) in
                               enumerate(zip(cells, widths))))


def _range(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]:.2f}-{bounds[1]:.2f}"


def _rate(mb_per_s: float) -> str:
    return f"{mb_per_s:,.1f}" if mb_per_s < 100 else f"{mb_per_s:,.0f}"


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.1f}" for value in load)


def _size_label(size: int) -> str:
    return f"{size / MB:g} MB" if size >= MB else f"{size / 1000:g} KB"


def _progress(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    arguments = _parse_arguments(argv)
    if arguments.memory_child:
        mode, object_key, key_path, source, target = arguments.memory_child
        print(json.dumps(memory_child(mode, object_key, key_path, source,
                                      target, arguments.traced)))
        return 0

    plan = QUICK_PLAN if arguments.quick else DEFAULT_PLAN
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="strongroom-bench-",
                                    dir=arguments.tmp_dir))
    try:
        report = run(plan, scratch)
    finally:
        shutil.rmtree(scratch)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["seconds"] = time.perf_counter() - started

    print_report(report)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.vault_bench",
        description="Measure sealing, compression, store writes and memory.")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of about 20 s: fewer repetitions, "
                        "no 50 MB message, memory of the streams only")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every figure and sample as JSON here")
    parser.add_argument("--tmp-dir", type=Path, metavar="DIR",
                        help="make the scratch directory under DIR (default: "
                        "the system's); put it on the archive's filesystem "
                        "for store figures that apply to it")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
