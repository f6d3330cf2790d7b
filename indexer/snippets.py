"""Snippets: the words of a query shown in the text of the message body.

Every engine returns the same stored preview; the snippet is cut from it
here, so results look the same whichever engine found them.  Matching is
by word, case-insensitive, with prefixes for ``word*`` queries.
"""

from __future__ import annotations

import re

import regex

from indexer import query as query_tree

SURROUND_CHARS = 60
MAX_FRAGMENTS = 2
PLAIN_CHARS = 200
SEPARATOR = " … "
_WORD = re.compile(r"\w+")
# Chinese and Japanese run their words together, and the engines index
# each Han, Hiragana and Katakana character alone (a query's run is found
# anywhere in a longer one); so a run is highlighted wherever it stands,
# not only between word boundaries.
_CJK = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]")


def snippet_words(node: query_tree.Node) -> tuple[set[str], tuple[str, ...]]:
    """Return the (whole words, prefixes) of ``node`` that may be in the body."""
    words: set[str] = set()
    prefixes: list[str] = []
    for leaf in _positive_leaves(node):
        if isinstance(leaf, query_tree.Text) and leaf.field in (None, "body"):
            found = [word.lower() for word in _WORD.findall(leaf.text)]
            if leaf.prefix and found:
                prefixes.append(found.pop())
            words.update(found)
    return words, tuple(prefixes)


def snippet_runs(text: str, words: tuple[set[str], tuple[str, ...]]) -> list[tuple[str, bool]]:
    """Return up to two fragments of ``text`` around matches, as (text, is_match) runs.

    Without a match, the start of the text is the snippet.
    """
    pattern = _pattern(words)
    matches = _first_matches(pattern, text) if pattern else []
    if not matches:
        return [(text[:PLAIN_CHARS], False)] if text else []
    runs: list[tuple[str, bool]] = []
    for number, (start, end) in enumerate(_windows(matches, text)):
        if number:
            runs.append((SEPARATOR, False))
        position = start
        for match in matches:
            if match.start() < start or match.end() > end:
                continue
            if match.start() > position:
                runs.append((text[position:match.start()], False))
            runs.append((match.group(), True))
            position = match.end()
        if position < end:
            runs.append((text[position:end], False))
    return runs


def _pattern(words: tuple[set[str], tuple[str, ...]]) -> re.Pattern[str] | None:
    # One expression for all the words, so the scan runs in the regex
    # engine, not word by word in Python.
    whole, prefixes = words
    choices = [re.escape(word) for word in sorted(whole) if not _CJK.search(word)]
    choices += [re.escape(prefix) + r"\w*" for prefix in prefixes]
    runs = [re.escape(word) for word in sorted(whole, key=len, reverse=True)
            if _CJK.search(word)]
    alternatives = []
    if choices:
        alternatives.append(r"(?<!\w)(?:" + "|".join(choices) + r")(?!\w)")
    alternatives += runs
    if not alternatives:
        return None
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _first_matches(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    # Enough matches to fill the fragments; the rest of the text is not read.
    matches: list[re.Match[str]] = []
    windows = 0
    reach = -1
    for match in pattern.finditer(text):
        if match.start() - SURROUND_CHARS > reach:
            windows += 1
            if windows > MAX_FRAGMENTS:
                break
        reach = match.end() + SURROUND_CHARS
        matches.append(match)
    return matches


def _windows(matches: list[re.Match[str]], text: str) -> list[tuple[int, int]]:
    windows: list[tuple[int, int]] = []
    for match in matches:
        start = _word_start(text, max(0, match.start() - SURROUND_CHARS), match.start())
        end = _word_end(text, min(len(text), match.end() + SURROUND_CHARS), match.end())
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
        elif len(windows) < MAX_FRAGMENTS:
            windows.append((start, end))
        else:
            break
    return windows


def _word_start(text: str, start: int, limit: int) -> int:
    # A fragment opens on a whole word: cut inside one, it moves to the
    # next (never past the match it surrounds).
    if start == 0 or not _is_inside_word(text, start):
        return start
    following = _WORD_BREAK.search(text, start, limit)
    return following.end() if following else limit


def _word_end(text: str, end: int, limit: int) -> int:
    # ... and closes on one, dropping a word it would cut.
    if end >= len(text) or not _is_inside_word(text, end):
        return end
    position = end
    while position > limit and not text[position - 1].isspace():
        position -= 1
    return position if position > limit else limit


def _is_inside_word(text: str, position: int) -> bool:
    return bool(_WORD.match(text[position - 1])) and bool(_WORD.match(text[position]))


_WORD_BREAK = re.compile(r"\s+")


def _positive_leaves(node: query_tree.Node) -> list[query_tree.Node]:
    # Words under NOT are not in the hits, so they are never highlighted.
    if isinstance(node, (query_tree.And, query_tree.Or)):
        return [leaf for child in node.children for leaf in _positive_leaves(child)]
    if isinstance(node, query_tree.Not):
        return []
    return [node]
