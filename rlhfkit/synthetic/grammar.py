"""A seeded probabilistic grammar of short lowercase film and product reviews.

Why a grammar rather than a downloaded corpus: the whole RLHF loop has to run offline and its
outcome has to be measurable. The grammar gives

* a pre-training corpus on which a tiny LM learns a *rich* distribution over reviews: graded
  sentiment words, negation ("not", "never"), intensifiers and diminishers that bind to the next
  sentiment word, contrast clauses ("... , but ..."), and neutral filler facts. Review-level
  opinion is a latent variable (one draw per review), so RLHF has a real direction to shift;
* review openings (prompts) and short, terminated prompt/completion demonstrations for SFT;
* a closed vocabulary, so `follows_format` and the gold reward (`gold.py`) can tell grammatical
  text from the degenerate text that reward hacking produces.

Text format: lowercase words and the punctuation tokens "." and "," separated by single spaces,
e.g. ``the film was very good . the plot felt dull , but the acting was fine .``. Prompts have
the one form ``review of <subject> :`` (``review of the film midnight river :``, ``review of the
kettle :``); the ":" token appears only there. The corpus uses the same header before its
reviews, so a base model continues a prompt the way the corpus does: for 3–6 sentences. SFT
completions continue it for only 1–2 sentences and end with ".", which is the format SFT teaches.

Every public function is a pure function of its seed (a private ``random.Random``, never the
global generator).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

TERMINATOR = "."
COMMA = ","
PROMPT_MARK = ":"
PUNCTUATION = frozenset({TERMINATOR, COMMA, PROMPT_MARK})

NEGATORS: tuple[str, ...] = ("not", "never")
INTENSIFIERS: tuple[str, ...] = ("very", "truly", "really", "extremely")
# "a bit" is a two-word diminisher; the scorer keys it on "bit", which the grammar emits nowhere else.
DIMINISHERS: tuple[str, ...] = ("somewhat", "slightly", "a bit")

# Graded sentiment adjectives, several per grade. Shared words fit both domains; the
# domain-specific ones keep film and product reviews distinguishable (the gold reward's
# off-topic check relies on the nouns, not on these).
_SHARED_ADJ: dict[int, tuple[str, ...]] = {
    -3: ("terrible", "awful", "horrible", "dreadful", "abysmal"),
    -2: ("bad", "poor", "disappointing", "annoying", "lousy"),
    -1: ("dull", "weak", "bland", "flat", "uneven", "mediocre"),
    1: ("fine", "decent", "okay", "solid", "nice", "pleasant"),
    2: ("good", "great", "enjoyable", "impressive", "lovely"),
    3: ("wonderful", "brilliant", "excellent", "amazing", "superb", "fantastic", "outstanding", "perfect"),
}
_FILM_ADJ: dict[int, tuple[str, ...]] = {
    -3: ("unwatchable", "painful"),
    -2: ("boring", "tedious", "clumsy", "confusing"),
    -1: ("forgettable", "predictable", "messy", "slow"),
    1: ("watchable", "sweet", "competent"),
    2: ("fun", "funny", "clever", "charming", "moving"),
    3: ("gripping", "stunning", "masterful"),
}
_PRODUCT_ADJ: dict[int, tuple[str, ...]] = {
    -3: ("useless", "broken", "dangerous"),
    -2: ("flimsy", "noisy", "clunky", "fragile"),
    -1: ("fiddly", "shaky", "awkward", "wobbly"),
    1: ("sturdy", "reasonable", "adequate", "practical"),
    2: ("handy", "reliable", "comfortable", "smooth"),
    3: ("flawless", "terrific", "ideal"),
}
# Sentiment verbs, all in the past tense so "never"/"really" can precede them ("i never liked").
_VERBS: dict[str, int] = {"loved": 3, "liked": 2, "enjoyed": 2, "disliked": -2, "hated": -3}
_RECOMMEND = "recommend"  # "i would (not|really) recommend it"


def _merge(a: dict[int, tuple[str, ...]], b: dict[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    return {g: a[g] + b[g] for g in a}


FILM_ADJECTIVES = _merge(_SHARED_ADJ, _FILM_ADJ)
PRODUCT_ADJECTIVES = _merge(_SHARED_ADJ, _PRODUCT_ADJ)

SENTIMENT: dict[str, int] = {
    **{w: g for adj in (_SHARED_ADJ, _FILM_ADJ, _PRODUCT_ADJ) for g, ws in adj.items() for w in ws},
    **_VERBS,
    _RECOMMEND: 2,
}

# ---- nouns --------------------------------------------------------------------------------
FILM_NOUNS: tuple[str, ...] = ("film", "movie")
_TITLE_FIRST = ("midnight", "silent", "hidden", "distant", "golden", "northern", "paper", "glass", "winter",
                "summer", "crimson", "hollow", "iron", "silver", "velvet", "last", "lost", "final", "burning",
                "frozen", "wild", "secret", "empty", "electric", "fading", "second", "endless", "purple",
                "little", "long", "red", "blue", "stolen", "sleeping")
_TITLE_SECOND = ("river", "garden", "city", "road", "house", "moon", "star", "island", "letter", "harbor",
                 "mountain", "forest", "station", "train", "ocean", "kingdom", "mirror", "shadow", "signal",
                 "storm", "valley", "bridge", "window", "door", "horizon", "machine", "circus", "empire",
                 "echo", "tide", "summer", "crown", "song")
# Words a film title is made of: with a film's noun they name the subject itself (the gold's substance rule).
FILM_TITLE_WORDS: frozenset[str] = frozenset(_TITLE_FIRST + _TITLE_SECOND)
FILM_ASPECTS: tuple[str, ...] = ("plot", "story", "acting", "cast", "script", "dialogue", "ending",
                                 "soundtrack", "music", "pacing", "direction", "visuals", "humor", "editing",
                                 "villain", "finale", "opening", "lead", "cinematography")
PRODUCTS: tuple[str, ...] = ("blender", "kettle", "toaster", "vacuum", "lamp", "backpack", "phone", "charger",
                             "headset", "keyboard", "chair", "desk", "jacket", "watch", "speaker", "printer",
                             "mixer", "pan", "knife", "tent", "bicycle", "mattress", "router", "monitor",
                             "tablet", "umbrella", "wallet", "drill", "fan", "heater")
PRODUCT_ASPECTS: tuple[str, ...] = ("price", "battery", "design", "screen", "sound", "handle", "lid", "motor",
                                    "cable", "strap", "fabric", "packaging", "manual", "delivery", "support",
                                    "size", "weight", "color", "finish", "setup", "warranty", "material")

# ---- neutral filler -------------------------------------------------------------------------
_PLACES = ("a small town", "the city", "paris", "tokyo", "the desert", "a village", "the mountains",
           "space", "the future", "a farm", "an old hotel", "the sea")
_PERSONS = ("young teacher", "retired detective", "farmer", "pilot", "singer", "doctor", "student",
            "soldier", "chef", "painter", "nurse", "boxer")
_ACTIONS = ("moves to the city", "loses a letter", "returns home", "searches for a brother", "opens a shop",
            "plans a wedding", "starts a band", "joins the army", "finds a map", "leaves her family")
_SOURCES = ("novel", "true story", "comic", "play", "short story")
_RUNTIMES = ("ninety minutes", "two hours", "three hours", "eighty minutes", "a hundred minutes")
_RELATIONS = ("sister", "brother", "friend", "mother", "father", "partner", "roommate", "kids", "family")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PERIODS = ("year", "month", "week", "summer", "winter", "spring")
_VENUES = ("at the cinema", "at home", "on a plane", "at a festival", "on television")
_NUMBERS = ("two", "three", "four", "five", "ten", "twenty", "thirty", "forty", "fifty", "ninety")
_ITEMS = ("spare part", "small bag", "cleaning brush", "warranty card", "second cable", "user guide")
_TIMES = ("morning", "evening", "day", "week", "weekend")
_COLORS = ("black", "white", "green", "grey", "silver", "red", "blue")

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split text into grammar tokens: runs of word characters and single punctuation marks.

    Lenient on purpose ("good." gives "good", "."), so a model that drops a space is judged on its
    words rather than failing every check; anything outside the grammar (capitals, digits, other
    symbols) still comes out as a token that is not in `vocabulary()`.
    """
    return _TOKEN_RE.findall(text)


@dataclass(frozen=True, slots=True)
class _Subject:
    domain: str  # "film" or "product"
    noun: str  # film/movie, or the product
    header: str  # the full mention: "the film midnight river", "the kettle"
    refs: tuple[str, ...]  # short mentions once the header has introduced the subject


def _subject(rng: random.Random) -> _Subject:
    if rng.random() < 0.5:
        noun = rng.choice(FILM_NOUNS)
        title = f"{rng.choice(_TITLE_FIRST)} {rng.choice(_TITLE_SECOND)}"
        return _Subject("film", noun, f"the {noun} {title}", (f"the {noun}", "it", f"this {noun}", title))
    p = rng.choice(PRODUCTS)
    return _Subject("product", p, f"the {p}", (f"the {p}", "it", f"this {p}"))


def _sign(x: int) -> int:
    return 1 if x > 0 else -1


def _grade(rng: random.Random, polarity: float) -> int:
    """A sentiment grade in ±{1,2,3} around the review's latent polarity (in [-1, 1])."""
    g = round(3.0 * polarity + rng.gauss(0.0, 1.0))
    if g == 0:
        return rng.choice((-1, 1))
    return max(-3, min(3, g))


def _adj_phrase(rng: random.Random, adjs: dict[int, tuple[str, ...]], g: int, negate: bool = True) -> str:
    """An adjective phrase leaning toward grade ``g``; every modifier sits right before its word.

    ``negate=False`` after verbs that read badly with a negator ("felt never good").
    """
    r = rng.random() if negate else rng.random() * 0.78
    if r < 0.50:
        return rng.choice(adjs[g])
    if r < 0.68:
        return f"{rng.choice(INTENSIFIERS)} {rng.choice(adjs[g])}"
    if r < 0.78:
        if abs(g) <= 2:
            return f"{rng.choice(DIMINISHERS)} {rng.choice(adjs[g])}"
        return rng.choice(adjs[g])  # "slightly brilliant" reads oddly: diminish only milder words
    # Negation of an opposite-signed word keeps the phrase on the review's side ("not bad").
    opp = -_sign(g) * rng.randint(1, 3)
    if r < 0.92:
        return f"{rng.choice(NEGATORS)} {rng.choice(adjs[opp])}"
    return f"{rng.choice(NEGATORS)} {rng.choice(INTENSIFIERS)} {rng.choice(adjs[opp])}"


_POS_VERBS = tuple(v for v, s in _VERBS.items() if s > 0)
_NEG_VERBS = tuple(v for v, s in _VERBS.items() if s < 0)


def _verb_phrase(rng: random.Random, g: int) -> str:
    r = rng.random()
    same = _POS_VERBS if g > 0 else _NEG_VERBS
    if r < 0.5:
        return rng.choice(same)
    if r < 0.7:
        return f"{rng.choice(('really', 'truly'))} {rng.choice(same)}"
    if r < 0.8:
        return f"somewhat {rng.choice(same)}"
    opp = _NEG_VERBS if g > 0 else _POS_VERBS
    return f"never {rng.choice(opp)}" if r < 0.92 else f"never really {rng.choice(opp)}"


def _clause(rng: random.Random, subj: _Subject, ref: str, g: int, allow_recommend: bool) -> str:
    """One sentiment clause (no punctuation) about the subject or one of its aspects."""
    film = subj.domain == "film"
    adjs = FILM_ADJECTIVES if film else PRODUCT_ADJECTIVES
    aspect = rng.choice(FILM_ASPECTS if film else PRODUCT_ASPECTS)
    k = rng.randrange(9 if allow_recommend else 8)
    if k == 0:
        return f"{ref} was {_adj_phrase(rng, adjs, g)}"
    if k == 1:
        return f"the {aspect} was {_adj_phrase(rng, adjs, g)}"
    if k == 2:
        return f"the {aspect} felt {_adj_phrase(rng, adjs, g, negate=False)}"
    if k == 3:
        return f"the {aspect} is {_adj_phrase(rng, adjs, g)}"
    if k == 4:
        return f"i found the {aspect} {_adj_phrase(rng, adjs, g, negate=False)}"
    if k == 5:
        return f"i {_verb_phrase(rng, g)} the {aspect}"
    if k == 6:
        return f"i {_verb_phrase(rng, g)} {ref}"
    if k == 7:
        return f"overall it was {_adj_phrase(rng, adjs, g)}"
    if g > 0:
        mod = rng.choice(("", "", "really ", "truly "))
    else:
        mod = rng.choice(NEGATORS) + " "
    tail = rng.choice(("", "", f" to my {rng.choice(_RELATIONS)}"))
    return f"i would {mod}recommend it{tail}"


def _sentiment_sentence(rng: random.Random, subj: _Subject, ref: str, polarity: float,
                        allow_recommend: bool) -> str:
    g = _grade(rng, polarity)
    first = _clause(rng, subj, ref, g, allow_recommend)
    # A recommendation is a verdict: at most one per review, never the second half of a sentence
    # (which would produce "i would not recommend it , but i would recommend it").
    r = rng.random()
    if r < 0.22:  # contrast: the second clause goes against the first
        g2 = -_sign(g) * rng.randint(1, 2)
        return f"{first} , but {_clause(rng, subj, rng.choice(subj.refs), g2, False)} ."
    if r < 0.32:
        return f"{first} and {_clause(rng, subj, rng.choice(subj.refs), _grade(rng, polarity), False)} ."
    return f"{first} ."


def _filler_sentence(rng: random.Random, subj: _Subject, ref: str) -> str:
    """A neutral fact (plot, runtime, price, delivery ...): no sentiment word, no modifier."""
    if subj.domain == "film":
        k = rng.randrange(7)
        if k == 0:
            return f"{ref} is set in {rng.choice(_PLACES)} ."
        if k == 1:
            return f"{ref} is based on a {rng.choice(_SOURCES)} ."
        if k == 2:
            return f"{ref} came out last {rng.choice(_PERIODS)} ."
        if k == 3:
            return f"the story follows a {rng.choice(_PERSONS)} who {rng.choice(_ACTIONS)} ."
        if k == 4:
            return f"it runs about {rng.choice(_RUNTIMES)} ."
        if k == 5:
            return f"i watched {ref} with my {rng.choice(_RELATIONS)} on {rng.choice(_DAYS)} ."
        return f"i saw {ref} {rng.choice(_VENUES)} ."
    k = rng.randrange(9)
    if k == 0:
        return f"i bought {ref} for my {rng.choice(_RELATIONS)} ."
    if k == 1:
        return f"i bought {ref} last {rng.choice(_PERIODS)} ."
    if k == 2:
        return f"{ref} arrived on {rng.choice(_DAYS)} ."
    if k == 3:
        return f"{ref} costs about {rng.choice(_NUMBERS)} dollars ."
    if k == 4:
        return f"the box came with a {rng.choice(_ITEMS)} ."
    if k == 5:
        return f"i use {ref} every {rng.choice(_TIMES)} ."
    if k == 6:
        return f"{ref} comes in {rng.choice(_COLORS)} ."
    if k == 7:
        return f"delivery took {rng.choice(_NUMBERS)} days ."
    return f"it replaced my old {subj.noun} ."


def _body(rng: random.Random, subj: _Subject, n: int, p_filler: float, first_ref: str | None = None) -> str:
    """``n`` sentences about ``subj`` sharing one latent polarity (uniform in [-1, 1])."""
    polarity = rng.uniform(-1.0, 1.0)
    out: list[str] = []
    recommended = False
    for i in range(n):
        ref = first_ref if (i == 0 and first_ref) else rng.choice(subj.refs)
        # Redraw a sentence the review already contains (a couple of tries is enough): people do
        # not repeat themselves verbatim, and the gold reward treats repetition as degenerate.
        for _ in range(3):
            if rng.random() < p_filler:
                sent = _filler_sentence(rng, subj, ref)
            else:
                sent = _sentiment_sentence(rng, subj, ref, polarity, not recommended)
            if sent not in out:
                break
        recommended = recommended or _RECOMMEND in sent
        out.append(sent)
    return " ".join(out)


def _header(subj: _Subject) -> str:
    return f"review of {subj.header} {PROMPT_MARK}"


def generate_filler(rng: random.Random, domain: str | None = None) -> str:
    """One neutral sentence (a plot, runtime, price or delivery fact) for a random subject."""
    subj = _subject(rng)
    while domain is not None and subj.domain != domain:
        subj = _subject(rng)
    return _filler_sentence(rng, subj, rng.choice(subj.refs))


def generate_review(rng: random.Random, n_sentences: int | None = None) -> str:
    """One headerless review (1–3 sentences unless ``n_sentences``) naming its subject in full first."""
    n = rng.randint(1, 3) if n_sentences is None else n_sentences
    subj = _subject(rng)
    # The first mention is the full one ("the film midnight river", "this kettle") because no header
    # has introduced the subject.
    first = subj.header if subj.domain == "film" else rng.choice((subj.header, f"this {subj.noun}"))
    return _body(rng, subj, n, p_filler=0.25, first_ref=first)


def generate_corpus(n_docs: int, seed: int) -> list[str]:
    """Pre-training documents: 1–3 reviews each, mostly headed ``review of ... :``, 3–6 sentences a review.

    Reviews run on for at least three sentences so that a base model learns that a review does
    not stop after one or two; stopping early is what SFT has to teach.
    """
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            n = rng.randint(3, 6)
            if rng.random() < 0.85:
                subj = _subject(rng)
                parts.append(f"{_header(subj)} {_body(rng, subj, n, p_filler=0.3)}")
            else:
                parts.append(generate_review(rng, n))
        docs.append(" ".join(parts))
    return docs


def make_prompts(n: int, seed: int) -> list[str]:
    """Review openings ``review of <subject> :`` for a model to continue (half films, half products)."""
    rng = random.Random(seed)
    return [_header(_subject(rng)) for _ in range(n)]


def make_sft_pairs(n: int, seed: int) -> list[dict]:
    """Demonstrations ``{"prompt": opening, "completion": " <1–2 sentences> ."}``.

    The completion starts with a space so ``prompt + completion`` is the same text the corpus would
    contain, and it is short and terminated: the completion format SFT is meant to teach.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        subj = _subject(rng)
        k = 1 if rng.random() < 0.6 else 2
        rows.append({"prompt": _header(subj), "completion": " " + _body(rng, subj, k, p_filler=0.15)})
    return rows


@lru_cache(maxsize=1)
def _vocab() -> frozenset[str]:
    words: set[str] = set(PUNCTUATION) | set(SENTIMENT) | set(NEGATORS) | set(INTENSIFIERS)
    pools = (DIMINISHERS, FILM_NOUNS, _TITLE_FIRST, _TITLE_SECOND, FILM_ASPECTS, PRODUCTS, PRODUCT_ASPECTS,
             _PLACES, _PERSONS, _ACTIONS, _SOURCES, _RUNTIMES, _RELATIONS, _DAYS, _PERIODS, _VENUES,
             _NUMBERS, _ITEMS, _TIMES, _COLORS)
    for pool in pools:
        for phrase in pool:
            words.update(phrase.split())
    # The literal words of the templates above (kept in sync by the vocabulary test, which
    # generates text and checks every token).
    words.update(
        "review of the this it was felt is i found overall would to my but and set in based on a came out "
        "last story follows who runs about watched with saw bought for arrived costs dollars box use every "
        "comes delivery took days replaced old".split())
    return frozenset(words)


def vocabulary_set() -> frozenset[str]:
    """`vocabulary()` as a (cached) set, for membership tests."""
    return _vocab()


def vocabulary() -> list[str]:
    """Every token the grammar can emit, prompts included, sorted."""
    return sorted(_vocab())


@lru_cache(maxsize=1)
def _completion_vocab() -> frozenset[str]:
    # A continuation never contains the prompt marker: one that does has started a new review.
    return _vocab() - {PROMPT_MARK}


def count_sentences(tokens: list[str]) -> int:
    """Sentences in a token list: one per terminator, plus one for unterminated trailing words."""
    n = tokens.count(TERMINATOR)
    return n + 1 if tokens and tokens[-1] != TERMINATOR else n


def follows_format(completion: str) -> bool:
    """The SFT completion format: 1–2 sentences, each with a word, ending in ".", grammar words only.

    The prompt marker ":" is rejected even though prompts use it, because a completion containing
    it has begun a new review instead of finishing this one.
    """
    tokens = tokenize(completion)
    if not tokens or tokens[-1] != TERMINATOR or tokens.count(TERMINATOR) > 2:
        return False
    vocab = _completion_vocab()
    if any(t not in vocab for t in tokens):
        return False
    # Each sentence needs at least one word: ". ." or ", ." is punctuation, not a sentence.
    has_word = False
    for t in tokens:
        if t == TERMINATOR:
            if not has_word:
                return False
            has_word = False
        elif t not in PUNCTUATION:
            has_word = True
    return True
