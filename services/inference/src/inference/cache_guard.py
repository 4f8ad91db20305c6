"""The semantic cache's lexical guard: may two prompts that embed close share an answer?

Sentence embeddings (all-MiniLM-L6-v2 here) place "from Tokyo to Los Angeles" and "from Los
Angeles to Tokyo", or "safe to disable" and "not safe to disable", closer together than
most real paraphrases (bench/semantic_cache.py, on bench/data/semantic_cache_pairs.jsonl):
no similarity threshold alone keeps false hits under 1 %. A semantic candidate must
therefore also pass `compatible(a, b)`, which refuses the differences an embedding
blurs. Each check is one function below; `conflicts(a, b)` names the ones that fail.

- **numbers**: the same numbers, whatever their spelling ("10", "ten", "1,000", "20 %",
  "20 percent", "6 am" vs "6 pm", "3rd", "twice"). The number one is ignored: "one",
  "a" and "single" say the same, and "one" is as often a pronoun.
- **negation**: as many negations on each side (not, no, never, without, except, n't,
  cannot, non-, ...).
- **entities**: every name or code-like token of one side (a capitalised word not at a
  sentence's start, an ALL-CAPS word, camelCase, a token with a digit, an underscore or
  an inner dot, C++ and C#) occurs in the other, as a name or a plain word.
- **quotes**: a quoted string of one side ('...', "...", `...`) occurs word for word in
  the other: it is the payload (text to translate, proofread, summarise).
- **order**: two shared words (or numbers) that swap places around the same words ("the
  moon orbits the earth" vs "the earth orbits the moon", "9 minus 4") or around a
  directed relation ("from a landlord to a tenant", "faster than"), at most five words
  apart. Conjunctions ("TCP and UDP" vs "UDP and TCP", "Rust vs Go") are symmetric and
  do not count.
- **opposites**: a word on one side whose opposite is on the other: a small list of
  common pairs (pros/cons, for/against, best/worst, before/after, ...) and prefixes
  (un-, dis-, in-, non-, anti-, de-, up-/down-, en-/de-, ...).
- **question**: who, when, where and why ask different questions; each side asks the same
  of them, at a sentence's start ("what time" counts as when, "which person" as who, "the
  reason" as why; what, which and how alone are left alone: they are how people rephrase).
- **scope**: how much is asked for: "only"/"just" and "all"/"every"/"whole"/"full"/
  "detailed"/... occur on both sides or on neither.
- **slot**: the prompts are word for word the same frame, at least half of the longer one
  in common at its start and end, with one small part (up to three words) replaced ("the
  rules of cricket" vs "the rules of baseball", "time complexity" vs "space complexity"):
  the replaced part is what the question is about.

Words are compared lowercased, with light stemming (plurals, -ed, -ing, -ly), a few common
aliases (js/javascript, postgres/postgresql, ...), stopwords and request verbs ("please",
"explain", "give me") left out where they carry no meaning, and a typo allowance (one
letter added, dropped, changed or two swapped, in words of five letters or more). A
capitalised acronym matches the initials of the other side's words (ML, machine learning).

Bounds: the checks read the first `MAX_CHARS` characters of each prompt; past those the two
prompts must be the same text (a plain comparison), so nothing unread can differ. The work
is about linear in what is read (~0.3 ms for two 60-word prompts, ~1.6 ms for two of
`MAX_CHARS`, bench/semantic_cache.py); `analyse` keeps the last 2,048 prompts' readings,
so a prompt seen before costs ~0.05 ms. The regular expressions cannot backtrack beyond a
quoted string's 400-character bound.

What it cannot see: synonyms (in the same frame, "a specific version" vs "a particular
version" is refused as a replaced slot), unit conversions ("one week" vs "7 days" is
refused), and differences that need world knowledge. It errs towards refusing: a refusal
costs one call to the provider, a false hit a wrong answer. Measured on the labelled pairs
(bench/README.md): it refuses 233 of 255 near-misses and 29 of 204 paraphrases.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import NamedTuple

# What the checks read of each prompt: about 350 words, more than all-MiniLM-L6-v2 reads
# (256 wordpieces, ~1,000-1,300 characters of English); past it, `compatible` asks for the
# same text on both sides. Reading it all costs ~1.5 ms here (bench/semantic_cache.py).
MAX_CHARS = 2000

_WORD = re.compile(r"\w+(?:[.'\u2019-]\w+)*[+#]*")
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_NUMBER_TAIL = re.compile(r"\s?(%|percent|per cent|a\.?m\b|p\.?m\b|st\b|nd\b|rd\b|th\b)")
_ORDINAL = re.compile(r"\d+(?:st|nd|rd|th|am|pm)$", re.IGNORECASE)
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_QUOTED = re.compile(
    r"(?:^|(?<=[\s(:]))(?:'([^'\n]{1,400})'|\"([^\"\n]{1,400})\"|\u201c([^\u201d\n]{1,400})\u201d"
    r"|\u2018([^\u2019\n]{1,400})\u2019|`([^`\n]{1,400})`)(?=[\s.,;:!?)]|$)"
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SENTENCE_END = frozenset(".?!:;\n\x00")  # \x00: where a quoted string was
# Words this long (letters only) may carry a typo: "tpyescript" is "typescript".
_TYPO_MIN, _TYPO_MAX = 5, 30

STOPWORDS = _words(
    """a an the of to in on at by for from with into onto about as is are was were be been
    being am do does did doing have has had having i me my mine we us our you your yours he
    him his she her it its they them their this that these those there here and or but so
    if then than too very just also any some such own same other can could would should
    shall will may might must what which how whats hows thats it's what's that's i'm i'd
    i've let let's way ways please kindly thanks thank hi hello hey really actually
    simple simply quick quickly basic short briefly brief exactly possible best good
    tell give show explain describe write provide make create help want need like know
    suggest recommend find get list name share draft compose put go use using used work
    steps step process syntax example examples one single out up down over it's"""
)
# Words that never count as a question's topic in the slot check, though they are no
# stopwords for the other checks.
_WH = frozenset({"who", "whom", "whose", "when", "where", "why"})
_WH_CANONICAL = {"whom": "who", "whose": "who"}
# "Explain why", "tell me when": the question word after a request asks that question.
_ASKING = frozenset({"explain", "tell", "me", "us", "describe", "show", "know", "wonder"})
_ASKS = {"time": "when", "year": "when", "date": "when", "day": "when", "person": "who",
         "people": "who", "place": "where", "location": "where", "reason": "why"}  # fmt: skip

_NEGATIONS = _words(
    """not no never none nothing nobody nowhere neither nor without except excluding
    cannot non dont doesnt didnt isnt arent wasnt werent cant couldnt wont wouldnt
    shouldnt hasnt havent hadnt mustnt neednt"""
)

_UNITS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "twice": 2, "thrice": 3,
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "half": 0.5, "quarter": 0.25,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}

# Common opposites that share no prefix. Either word on one side and its opposite on the
# other, neither on both, refuses the pair.
_OPPOSITES = (
    "pro/con for/against advantage/disadvantage benefit/drawback strength/weakness "
    "best/worst better/worse before/after min/max minimum/maximum increase/decrease "
    "raise/lower rise/fall gain/lose win/lose hot/cold hottest/coldest hotter/colder "
    "positive/negative true/false truthy/falsy left/right import/export upload/download "
    "upgrade/downgrade upstream/downstream input/output inbound/outbound open/close "
    "start/stop add/remove buy/sell high/low higher/lower highest/lowest more/less "
    "most/least fastest/slowest faster/slower fast/slow largest/smallest biggest/smallest "
    "bigger/smaller large/small big/small long/short longer/shorter longest/shortest "
    "ascending/descending asc/desc easy/hard easiest/hardest cheap/expensive "
    "cheapest/expensive early/late earlier/later old/new older/newer oldest/newest "
    "young/old male/female north/south east/west success/failure succeed/fail "
    "love/hate light/dark above/below top/bottom first/last upper/lower "
    "uppercase/lowercase encode/decode encrypt/decrypt include/exclude inside/outside "
    "internal/external push/pull send/receive accept/reject allow/deny allow/block "
    "allowed/forbidden enable/disable on/off online/offline public/private "
    "synchronous/asynchronous sync/async client/server parent/child horizontal/vertical "
    "horizontally/vertically inner/outer plus/minus add/subtract multiply/divide "
    "sum/difference dead/alive pass/fail cause/effect debit/credit lend/borrow "
    "import/export serialize/deserialize expand/collapse attach/detach connect/disconnect "
    "install/uninstall mount/unmount lock/unlock follow/unfollow subscribe/unsubscribe "
    "morning/evening day/night summer/winter spring/autumn wet/dry full/empty "
    "heavy/light strong/weak rich/poor happy/sad legal/illegal safe/dangerous good/bad "
    "up/down"
)
_OPPOSITE_OF: dict[str, frozenset[str]] = {}

# A word and the same word with one of these in front are opposites (safe/unsafe,
# toxic/nontoxic, like/dislike); the base must be this long for in-/im-/de- (not
# "stall"/"install", "bug"/"debug").
_NEGATING_PREFIXES = (("un", 3), ("dis", 3), ("non", 3), ("anti", 3), ("in", 5), ("im", 5),
                      ("il", 5), ("ir", 5), ("de", 5), ("mis", 4), ("counter", 3))  # fmt: skip
# Prefixes that swap for the opposite word (encrypt/decrypt, upgrade/downgrade).
_SWAPPED_PREFIXES = (("en", "de"), ("en", "dis"), ("up", "down"), ("in", "out"),
                     ("over", "under"), ("pre", "post"), ("im", "ex"), ("in", "ex"),
                     ("max", "min"), ("inc", "dec"), ("upper", "lower"))  # fmt: skip

# Spellings of one thing: the first is the canonical word.
_ALIASES = {
    "node.js": "node", "nodejs": "node", "js": "javascript", "ts": "typescript",
    "golang": "go", "postgres": "postgresql",
    "psql": "postgresql", "k8s": "kubernetes", "py": "python", "dict": "dictionary",
    "dicts": "dictionary", "repo": "repository", "env": "environment", "var": "variable",
    "vars": "variable", "app": "application", "apps": "application",
    "config": "configuration", "docs": "documentation", "info": "information",
    "db": "database", "sqrt": "square-root", "colour": "color",
    "colours": "color", "summarise": "summarize", "summarize": "summarize",
    "realise": "realize", "organise": "organize", "favourite": "favorite", "mac": "macos",
    "osx": "macos", "wifi": "wi-fi", "e-mail": "email", "emails": "email",
    "centre": "center", "whats": "what", "kilometres": "km", "kilometers": "km",
    "kilometre": "km", "kilometer": "km", "kilograms": "kg", "kilogram": "kg",
    "pounds": "lb", "pound": "lb", "lbs": "lb", "minutes": "min", "minute": "min",
    "mins": "min", "hours": "hour", "hrs": "hour", "hr": "hour", "seconds": "sec",
    "secs": "sec", "&": "and", "vs": "versus", "w/": "with", "u": "you", "ur": "your",
    "pls": "please", "plz": "please", "thx": "thanks", "cuz": "because", "bc": "because",
}  # fmt: skip
_ORDER_SPAN = 5
_ARTICLES = frozenset({"a", "an", "the", "'s"})
_SYMMETRIC = frozenset({"and", "or", "versus", "between", "with", "nor", "both"})
# Words that relate what stands on their two sides in one direction.
_RELATIONS = _words(
    """to from into onto than by over under above below before after against toward
    towards cause caus via"""
)
# How much of a thing is asked for: "only the first sentence" is not "both sentences".
_SCOPE = {w: "only" for w in ("only", "just", "solely", "merely")} | {
    w: "all"
    for w in ("all", "every", "whole", "entire", "complete", "comprehensive",
              "full", "detailed", "thorough", "exhaustive")
}  # fmt: skip


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A light stemmer: enough that "planets"/"planet" and "walked"/"walk" match."""
    for suffix, keep in (("'s", ""), ("\u2019s", ""), ("ies", "y"), ("sses", "ss"), ("ing", ""),
                         ("ed", ""), ("es", ""), ("ly", ""), ("s", "")):  # fmt: skip
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + keep
    return word


for _pair in _OPPOSITES.split():
    _x, _y = _pair.split("/")
    for _a, _b in ((_x, _y), (_y, _x), (_stem(_x), _stem(_y)), (_stem(_y), _stem(_x))):
        _OPPOSITE_OF[_a] = _OPPOSITE_OF.get(_a, frozenset()) | {_b}


def _deletions(word: str) -> set[str]:
    """The word with each one letter left out: two words are one typo apart (one letter
    added, left out, changed, or two swapped) when these sets of theirs meet, or one holds
    the other word."""
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


@dataclass(frozen=True)
class Prompt:
    """What the checks need of one prompt, computed once."""

    words: tuple[str, ...]  # every word: lowercased, aliased, stemmed, quotes left out
    vocabulary: frozenset[str]  # every form of every word, quotes included
    initials: tuple[str, ...]  # each word's first letter (hyphenated parts apart)
    numbers: frozenset[str]
    negations: int
    entities: frozenset[str]
    quoted: tuple[tuple[str, ...], ...]
    all_words: tuple[str, ...]  # `words` with the quoted strings' words in place
    questions: frozenset[str]  # who, when, where, why: at a sentence's start
    scope: frozenset[str]  # "only" and "all", however said

    @cached_property
    def near(self) -> frozenset[str]:
        """The words of five letters or more, and each with one letter left out: what
        a word one typo away from one of them meets (`_known`)."""
        near: set[str] = set()
        for word in self.vocabulary:
            if _TYPO_MIN <= len(word) <= _TYPO_MAX and word.isalpha():
                near.add(word)
                near |= _deletions(word)
        return frozenset(near)


def _numbers(text: str) -> set[str]:
    found: set[str] = set()
    text = _TIME.sub(lambda m: m[1] if m[2] == "00" else f"{m[1]}:{m[2]}", text)
    for match in _NUMBER.finditer(text):
        raw = match[0].replace(",", "")
        value = raw.rstrip("0").rstrip(".") if "." in raw else raw.lstrip("0") or "0"
        tail = _NUMBER_TAIL.match(text, match.end())
        if tail is not None:
            unit = tail[1].replace(".", "")
            if unit in ("%", "percent", "per cent"):
                value += "%"
            elif unit in ("am", "pm"):
                found.add(unit)
        if value != "1":
            found.add(value)
    return found


def _number_words(words: list[str]) -> set[str]:
    """Numbers written as words: "twenty five" 25, "two hundred" 200, "a dozen" 12."""
    found: set[str] = set()
    total, current, seen = 0.0, 0.0, False
    for word in [*words, ""]:
        if word in _UNITS:
            current += _UNITS[word]
            seen = True
        elif word in _SCALES and (seen or total == 0):
            total += max(current, 1) * _SCALES[word]
            current, seen = 0, True
        elif word == "percent" and seen:
            found.add(f"{_format(total + current)}%")
            total, current, seen = 0, 0, False
        else:
            if seen and total + current != 1:
                found.add(_format(total + current))
            total, current, seen = 0, 0, False
    return found


def _format(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _is_entity(token: str, sentence_start: bool) -> bool:
    if token.isalpha() and token.islower():
        return False
    letters = [c for c in token if c.isalpha()]
    if not letters or token in ("I", "I'm", "I'd", "I've", "I'll"):
        return False
    parts = token.replace(".", "-").split("-")
    if "_" in token or any(
        any(c.isdigit() for c in p) and any(c.isalpha() for c in p) and not _ORDINAL.match(p)
        for p in parts
    ):
        return True  # user_id, 2FA, gpt-4o, base64 (not 3-day or 3rd: numbers, checked)
    if "." in token and max(len(part) for part in token.split(".")) > 1:  # not e.g.
        return True
    if token.endswith(("+", "#")):
        return True
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return True
    if any(c.isupper() for c in token[1:]):  # camelCase, iPhone, PostgreSQL
        return True
    return token[0].isupper() and not sentence_start


def _asks_with(previous: list[str]) -> bool:
    """Whether the words before this one are "what", "which" or "what's the"."""
    last = previous[-2:]
    if last and last[-1] in ("the", "a"):
        last = last[:-1]
    return bool(last) and last[-1] in ("what", "which", "what's")


@lru_cache(maxsize=65536)
def _word(token: str) -> str:
    """A token as the checks compare it: lowercased, aliased, stemmed (not an acronym:
    HTTPS is no plural of HTTP)."""
    lowered = token.lower().replace("\u2019", "'")
    lowered = _ALIASES.get(lowered, lowered)
    return lowered if len(token) > 1 and token.isupper() else _stem(lowered)


class _Token(NamedTuple):
    """What `analyse` needs of one token, whatever its place (cached per token)."""

    lowered: str
    word: str
    parts: tuple[str, ...]  # split at hyphens
    forms: tuple[str, ...]  # for the vocabulary
    negations: int
    entity_anywhere: bool  # a name even at a sentence's start (ALL-CAPS, camelCase, ...)
    entity_inside: bool  # a name unless at a sentence's start (capitalised)


@lru_cache(maxsize=65536)
def _token(token: str) -> _Token:
    lowered = token.lower().replace("\u2019", "'")
    lowered = _ALIASES.get(lowered, lowered)
    word = _word(token)
    parts = tuple(lowered.split("-"))
    forms = (lowered, word, lowered.replace("-", ""), lowered.split("'")[0],
             *(_stem(p) for p in parts))  # fmt: skip
    negations = sum(1 for p in parts if p in _NEGATIONS or p.endswith("n't"))
    anywhere = _is_entity(token, sentence_start=True)
    return _Token(lowered, word, parts, forms, negations, anywhere,
                  anywhere or _is_entity(token, sentence_start=False))  # fmt: skip


@lru_cache(maxsize=2048)
def analyse(text: str) -> Prompt:
    """Read one prompt (its first MAX_CHARS characters)."""
    text = text[:MAX_CHARS].replace("°F", " fahrenheit").replace("°C", " celsius")
    quoted: list[tuple[str, ...]] = []
    spans: list[tuple[int, int]] = []
    for match in _QUOTED.finditer(text):
        inner = next(group for group in match.groups() if group is not None)
        words = tuple(_word(w) for w in _WORD.findall(inner))
        if words:
            quoted.append(words)
            spans.append(match.span())
    outside = text
    for start, end in reversed(spans):
        outside = outside[:start] + " \x00 " + outside[end:]

    tokens: list[_Token] = []
    entities: set[str] = set()
    questions: set[str] = set()
    vocabulary: set[str] = set()
    sentence_start = True
    position = 0
    for match in _WORD.finditer(outside):
        gap = outside[position : match.start()]
        if not _SENTENCE_END.isdisjoint(gap):
            sentence_start = True
        position = match.end()
        t = _token(match[0])
        if t.entity_anywhere or (t.entity_inside and not sentence_start):
            entities.add(t.word)
        asked = sentence_start or "," in gap or (tokens and tokens[-1].lowered in _ASKING)
        if t.lowered in _WH and (asked or t.lowered == "whom"):
            questions.add(_WH_CANONICAL.get(t.lowered, t.lowered))
        elif t.lowered in _ASKS and _asks_with([p.lowered for p in tokens[-2:]]):
            questions.add(_ASKS[t.lowered])  # what time: when; which person: who
        sentence_start = False
        tokens.append(t)
        vocabulary.update(t.forms)

    parts = [p for t in tokens for p in t.parts]
    for first, second in itertools.pairwise(parts):
        vocabulary.add(first + second)  # "wifi" for "wi fi", "bigo" for "big o"
    for q in quoted:
        vocabulary.update(q)
    return Prompt(
        words=tuple(t.word for t in tokens),
        vocabulary=frozenset(vocabulary),
        initials=tuple(p[0] for p in parts if p),
        numbers=frozenset(_numbers(text.lower()) | _number_words(parts)),
        negations=sum(t.negations for t in tokens),
        entities=frozenset(entities),
        quoted=tuple(quoted),
        all_words=tuple(_word(t) for t in _WORD.findall(text)),
        questions=frozenset(questions),
        scope=frozenset(_SCOPE[p] for p in parts if p in _SCOPE),
    )


def _content(word: str) -> bool:
    """Whether a word says what the prompt is about (no stopword, number or negation)."""
    return not (
        word in STOPWORDS or word in _NEGATIONS or word.endswith("n't") or word in _UNITS
        or word in _SCALES or word in _WH or any(c.isdigit() for c in word)
    )  # fmt: skip


def _known(word: str, other: Prompt) -> bool:
    """Whether `word` (of one prompt) occurs in `other`, allowing for one typo."""
    vocabulary = other.vocabulary
    if word in vocabulary or _stem(word) in vocabulary or word.replace("-", "") in vocabulary:
        return True
    if not (_TYPO_MIN <= len(word) <= _TYPO_MAX and word.isalpha()):
        return False
    near = other.near
    return word in near or not near.isdisjoint(_deletions(word))


def _known_entity(entity: str, other: Prompt) -> bool:
    """An entity occurs in `other` as a word, all its parts do, or (an acronym) the
    initials of consecutive words spell it (ML, machine learning)."""
    if _known(entity, other) or _known(entity.replace("-", ""), other):
        return True
    parts = [p for p in entity.replace(".", "-").split("-") if p]
    if len(parts) > 1 and all(_known(p, other) for p in parts):
        return True
    if 2 <= len(entity) <= 5 and entity.isalpha():
        n = len(entity)
        initials = "".join(other.initials)
        return entity in initials and any(
            initials[i : i + n] == entity for i in range(len(initials) - n + 1)
        )
    return False


# The checks: each says whether `a` and `b` differ in its way.


def _numbers_differ(a: Prompt, b: Prompt) -> bool:
    return a.numbers != b.numbers


def _negation_differs(a: Prompt, b: Prompt) -> bool:
    return a.negations != b.negations


def _entities_differ(a: Prompt, b: Prompt) -> bool:
    return any(not _known_entity(e, b) for e in a.entities) or any(
        not _known_entity(e, a) for e in b.entities
    )


def _contains(words: tuple[str, ...], part: tuple[str, ...]) -> bool:
    n = len(part)
    return any(words[i : i + n] == part for i in range(len(words) - n + 1))


def _quotes_differ(a: Prompt, b: Prompt) -> bool:
    return any(not _contains(b.all_words, q) for q in a.quoted) or any(
        not _contains(a.all_words, q) for q in b.quoted
    )


def _order_differs(a: Prompt, b: Prompt) -> bool:
    """Two shared words u, v (content words or numbers) that swap places around the same
    words: "u w v" on one side, "v w u" on the other, where w is the same one to three
    words ("dogs chase cats", "moon orbits the earth"; articles aside) or includes a
    word of `_RELATIONS` ("from a landlord to a tenant"). u and v occur once on each side
    and stand at most `_ORDER_SPAN` words apart; a middle of only conjunctions ("TCP and
    UDP", "Bob or Alice", "Rust vs Go") is symmetric and does not count."""
    pa = _once(a.words)
    pb = _once(b.words)
    topics = sorted((pa[w], w) for w in pa if w in pb and _topic(w))
    for i, (position_u, u) in enumerate(topics):
        for position_v, v in topics[i + 1 :]:
            if position_v - position_u > _ORDER_SPAN:
                break
            if pb[u] < pb[v] or pb[u] - pb[v] > _ORDER_SPAN:
                continue  # the same order on both sides, or too far apart
            middle_a = a.words[position_u + 1 : position_v]
            middle_b = b.words[pb[v] + 1 : pb[u]]
            if _RELATIONS.intersection(middle_a).intersection(middle_b):
                return True
            bare_a = [w for w in middle_a if w not in _ARTICLES]
            if bare_a == [w for w in middle_b if w not in _ARTICLES] and any(
                w not in _SYMMETRIC for w in bare_a
            ):
                return True
    return False


def _topic(word: str) -> bool:
    """A word whose place says who does what: a content word or a number."""
    return _content(word) or word.replace(".", "").isdigit()


def _once(words: tuple[str, ...]) -> dict[str, int]:
    """Each word that occurs once, at its position."""
    seen: dict[str, int] = {}
    repeated: set[str] = set()
    for i, w in enumerate(words):
        if w in seen:
            repeated.add(w)
        seen[w] = i
    return {w: i for w, i in seen.items() if w not in repeated}


def _opposites_of(word: str) -> set[str]:
    """The words that say the opposite of `word`: its listed opposites, the word with a
    negating prefix added or taken away, its prefix swapped."""
    found = set(_OPPOSITE_OF.get(word, ()))
    for prefix, base in _NEGATING_PREFIXES:
        if len(word) >= base:
            found.add(prefix + word)
            found.add(f"{prefix}-{word}")
        rest = word[len(prefix) :].lstrip("-")
        if word.startswith(prefix) and len(rest) >= base:
            found.add(rest)
    for p, q in _SWAPPED_PREFIXES:
        for this, that in ((p, q), (q, p)):
            if word.startswith(this) and len(word) - len(this) >= 3:
                found.add(that + word[len(this) :])
    return found


def _opposites(a: Prompt, b: Prompt) -> bool:
    """A word more often on one side, its opposite more often on the other."""
    count_a = Counter(a.all_words)
    count_b = Counter(b.all_words)
    more_b = {w for w, n in count_b.items() if n > count_a[w]}
    if not more_b:
        return False
    return any(
        not more_b.isdisjoint(_opposites_of(w)) for w, n in count_a.items() if n > count_b[w]
    )


def _questions_differ(a: Prompt, b: Prompt) -> bool:
    return a.questions != b.questions


def _scope_differs(a: Prompt, b: Prompt) -> bool:
    return a.scope != b.scope


def _slot_differs(a: Prompt, b: Prompt) -> bool:
    """The same frame with one small part replaced: past their common beginning and end,
    each side has content words (at most three) that the other lacks, and that beginning
    and end are at least three words and half of the longer prompt."""
    x, y = a.words, b.words
    shortest = min(len(x), len(y))
    head = 0
    while head < shortest and x[head] == y[head]:
        head += 1
    tail = 0
    while tail < shortest - head and x[-1 - tail] == y[-1 - tail]:
        tail += 1
    equal = head + tail
    if equal < 3 or 2 * equal < max(len(x), len(y)):
        return False
    left = [w for w in x[head : len(x) - tail] if _content(w) and not _known(w, b)]
    right = [w for w in y[head : len(y) - tail] if _content(w) and not _known(w, a)]
    return 0 < len(left) <= 3 and 0 < len(right) <= 3


CHECKS: dict[str, Callable[[Prompt, Prompt], bool]] = {
    "numbers": _numbers_differ,
    "negation": _negation_differs,
    "entities": _entities_differ,
    "quotes": _quotes_differ,
    "order": _order_differs,
    "opposites": _opposites,
    "question": _questions_differ,
    "scope": _scope_differs,
    "slot": _slot_differs,
}


def conflicts(a: str, b: str) -> list[str]:
    """The names of the checks (CHECKS) that keep `a` and `b` from sharing an answer."""
    if a == b:
        return []
    if a[MAX_CHARS:] != b[MAX_CHARS:]:
        return ["beyond"]
    pa, pb = analyse(a), analyse(b)
    return [name for name, differs in CHECKS.items() if differs(pa, pb)]


def compatible(a: str, b: str) -> bool:
    """Whether two prompts that embed close may share an answer: no check refuses them."""
    if a == b:
        return True
    if a[MAX_CHARS:] != b[MAX_CHARS:]:
        return False
    pa, pb = analyse(a), analyse(b)
    return not any(differs(pa, pb) for differs in CHECKS.values())
