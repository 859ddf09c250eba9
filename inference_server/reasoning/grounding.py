"""Is the LLM's text grounded in the evidence? The server's checks of a reply, before anyone reads it.

A language model (and a 135M one above all) writes fluent text that may be false: a weapon
nobody saw, "a person attacked by a dog" for a cat, "the risk is low" on a critical event,
"High, High, High", or a lone ", ". ``check`` reads the model's words against what the
server knows (the detections, their counts, the household context and zones it was shown,
and the level the event will carry) and names the first problem, or returns None.

Each vocabulary group below lists the words that claim something, and what grounds them:
a detection with one of ``labels`` (or of ``category``), or the same word in the context the
model was given (the camera name, zones, household context: "we have a dog" grounds "dog").
Threats the detector cannot see at all (attacks, shootings) are grounded only by that text.

A model that saw the key frames (``Evidence.saw_picture``) may report what the detector missed:
an object, animal, person or a count the detections do not ground is then not a rejection but
the model's observation, returned by ``review`` and stored and published as such
(``model_observations``); empty or repetitive text and a level contradiction are rejected
either way.

``LOWERING_CHECKS`` is the hook for lowering a score (see ``docs/risk.md``, "LLM phase"): each
check returns a reason the server itself verified (for example a recognised resident, once
people are recognised) or None. It is empty today, so the LLM never lowers the rules' score.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inference_server.domain import Observation, category_of
from inference_server.schemas import Category, RiskLevel


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Words that claim a thing was there, and the detections that ground them."""

    kind: str
    words: frozenset[str]
    #: Detector labels that ground the words (empty: only the context text can).
    labels: frozenset[str] = frozenset()
    #: A detection of this category grounds the words too.
    category: Category | None = None


def _vocabulary(kind: str, words: str, labels: str = "", category: Category | None = None) -> Vocabulary:
    return Vocabulary(kind, frozenset(words.split()), frozenset(labels.split(",")) - {""}, category)


#: What a reply may not claim without evidence. Multi-word entries are matched as phrases.
VOCABULARY: tuple[Vocabulary, ...] = (
    _vocabulary(
        "weapon",
        "gun guns handgun handguns pistol pistols rifle rifles shotgun firearm firearms weapon weapons armed_with"
        " machete crowbar bomb bombs explosive explosives grenade grenades ammunition",
    ),
    _vocabulary("weapon", "knife knives blade blades", "knife"),
    _vocabulary("weapon", "scissors", "scissors"),
    _vocabulary("weapon", "baseball_bat", "baseball bat"),
    _vocabulary(
        "threat",
        "attack attacks attacked attacking assault assaulted assaulting stab stabbed stabbing shoot shooting"
        " shot shots fight fighting violence violent hostage kidnap kidnapping murder killed killing injured"
        " bleeding blood",
    ),
    _vocabulary(
        "person",
        "person persons man men woman women child children kid kids boy girl intruder intruders stranger"
        " strangers burglar burglars thief thieves individual individuals",
        "person",
        "person",
    ),
    _vocabulary("animal", "animal animals pet pets wildlife", category="animal"),
    _vocabulary("animal", "cat cats kitten kittens", "cat"),
    _vocabulary("animal", "dog dogs puppy puppies", "dog"),
    _vocabulary("animal", "bird birds", "bird"),
    _vocabulary("animal", "horse horses", "horse"),
    _vocabulary("animal", "sheep", "sheep"),
    _vocabulary("animal", "cow cows cattle", "cow"),
    _vocabulary("animal", "fox foxes deer raccoon raccoons squirrel squirrels", category="animal"),
    _vocabulary("vehicle", "vehicle vehicles", category="vehicle"),
    _vocabulary("vehicle", "car cars", "car"),
    _vocabulary("vehicle", "truck trucks lorry van vans", "truck"),
    _vocabulary("vehicle", "bus buses", "bus"),
    _vocabulary("vehicle", "motorcycle motorcycles motorbike motorbikes scooter", "motorcycle"),
    _vocabulary("vehicle", "bicycle bicycles bike bikes cyclist", "bicycle"),
    _vocabulary("vehicle", "boat boats", "boat"),
    _vocabulary("vehicle", "train trains", "train"),
)

_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
_NUMBERS |= {"ten": 10, "several": -1, "multiple": -1, "many": -1}
_WEAPON_LABELS = frozenset({"knife", "scissors", "baseball bat"})
#: Nouns a count may be about: the "person" words plus "people"; animals and vehicles by their words.
_PEOPLE = frozenset({"people"})

_LOW_SAYING = re.compile(
    r"\b(?:low|minimal|negligible|little|no)\s+(?:risk|threat|danger|concern)\b"
    r"|\b(?:risk|threat|danger|score)\b[^.]{0,40}?\b(?:is|was|seems|appears|remains)\s+(?:very\s+|quite\s+)?low\b"
    r"|\bnothing\s+to\s+worry\b|\bno\s+cause\s+for\s+concern\b|\bharmless\b|\bbenign\b"
    r"|\bnot\s+(?:a\s+)?(?:threat|suspicious|dangerous)\b|\bposes\s+no\b"
)
_HIGH_SAYING = re.compile(
    r"(?<!not )(?<!no )(?<!not a )\b(?:high|critical|serious|severe|extreme|significant)\s+(?:risk|threat|danger)\b"
    r"|\b(?:risk|threat|danger|score)\b[^.]{0,40}?\b(?:is|was|seems|appears)\s+(?:very\s+)?(?:high|critical)\b"
    r"|\bemergency\b|\bimmediate\s+danger\b"
)
_STOPWORD_TEXT = (
    "a an the and or but of to in on at by for with from is are was were be been it its this that there"
    " as not no so than then"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9']+")

#: A check the server can verify that allows the LLM to lower the rules' score: returns the
#: reason ("known_person: Anna recognised at 0.93") or None. ``context`` is what the model saw.
LoweringCheck = Callable[[Observation, Mapping[str, Any] | None], str | None]
#: Empty until the server can check a reason to lower (people recognition): no lowering today.
LOWERING_CHECKS: tuple[LoweringCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the model was shown, as the checks need it."""

    #: Detected labels and their categories.
    labels: frozenset[str]
    categories: frozenset[str]
    #: Most of each label seen together in one image; "person" category as well under "person".
    counts: Mapping[str, int]
    #: Camera name, zones and household context, lower case: words here are grounded too.
    text: str
    #: How many people the household context says are home (None: not known).
    people_home: int | None = None
    #: The model was shown the key frames: what it saw beyond the detector is its observation.
    saw_picture: bool = False

    @classmethod
    def of(
        cls,
        observation: Observation,
        *,
        objects: Mapping[str, int] | None = None,
        context: Mapping[str, Any] | None = None,
        zones: str | None = None,
        saw_picture: bool = False,
    ) -> Evidence:
        """The evidence of ``observation``; ``objects`` (label: most seen at once) as the event counts them."""
        labels = frozenset(d.label.lower() for d in observation.detections)
        if objects is None:
            objects = observation.max_counts or Counter(d.label for d in observation.detections)
        people = (context or {}).get("people_home")
        text = " ".join([observation.camera_name, observation.camera_id, zones or "", _flatten(context)])
        return cls(
            labels=labels,
            categories=frozenset(d.category for d in observation.detections),
            counts={label.lower(): n for label, n in objects.items()},
            text=" ".join(_WORD.findall(text.lower().replace("_", " "))),
            people_home=len(people) if isinstance(people, list) else None,
            saw_picture=saw_picture,
        )


def _flatten(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(f"{key} {_flatten(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return " ".join(_flatten(item) for item in value)
    return "" if value is None else str(value)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("_", " "))


def _phrase_in(phrase: str, words: Sequence[str]) -> bool:
    parts = phrase.split("_")
    return any(list(words[i : i + len(parts)]) == parts for i in range(len(words) - len(parts) + 1))


def _grounded(vocabulary: Vocabulary, word: str, evidence: Evidence) -> bool:
    if vocabulary.labels & evidence.labels:
        return True
    if vocabulary.category is not None and vocabulary.category in evidence.categories:
        return True
    return _phrase_in(word, evidence.text.split())


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


#: "armed" is the alarm's state after these words ("the alarm is armed") or before these ("armed away").
_ALARM_BEFORE = frozenset({"alarm", "alarms", "system", "house", "home", "security", "sensor", "sensors"})
_ALARM_AFTER = frozenset({"away", "home", "night", "vacation", "bypass", "custom", "state", "mode", "alarm"})


def _armed_person(words: Sequence[str]) -> bool:
    """ "armed" said of someone ("it was armed"), not of the alarm ("the alarm is armed", "armed away")."""
    for i, word in enumerate(words):
        if word != "armed":
            continue
        after = words[i + 1] if i + 1 < len(words) else ""
        if after not in _ALARM_AFTER and not _ALARM_BEFORE & set(words[max(0, i - 4) : i]):
            return True
    return False


def invented(text: str, evidence: Evidence) -> str | None:
    """The first claimed object or threat the evidence does not ground, as a rejection reason."""
    words = _words(text)
    for vocabulary in VOCABULARY:
        for word in sorted(vocabulary.words):
            if _phrase_in(word, words) and not _grounded(vocabulary, word, evidence):
                shown = word.replace("_", " ")
                return f"names {_article(vocabulary.kind)} {vocabulary.kind} not in the evidence: {shown!r}"
    if _armed_person(words) and not evidence.labels & _WEAPON_LABELS:
        return "names a weapon not in the evidence: 'armed' (of someone, not the alarm)"
    return None


def _count_of(noun: str, evidence: Evidence) -> tuple[str, set[int]] | None:
    """What a count of ``noun`` must equal: (what it counts, allowed numbers), or None if not counted."""
    if noun in _PEOPLE or any(noun in v.words for v in VOCABULARY if v.kind == "person"):
        allowed = {evidence.counts.get("person", 0)}
        if evidence.people_home is not None:
            allowed.add(evidence.people_home)
        return "person", allowed
    for vocabulary in VOCABULARY:
        if vocabulary.kind in {"animal", "vehicle"} and noun in vocabulary.words:
            if vocabulary.labels:
                return noun, {sum(evidence.counts.get(label, 0) for label in vocabulary.labels)}
            return noun, {sum(n for label, n in evidence.counts.items() if category_of(label) == vocabulary.category)}
    return None


def miscounted(text: str, evidence: Evidence) -> str | None:
    """A count ("two people", "3 cars") that differs from what the detector saw at once (within
    one clause: "two factors: person seen" counts factors)."""
    for clause in re.split(r"[.,;:!?()]", text):
        if (problem := _miscounted(_words(clause), evidence)) is not None:
            return problem
    return None


def _miscounted(words: Sequence[str], evidence: Evidence) -> str | None:
    for i, word in enumerate(words):
        number = int(word) if word.isdigit() and len(word) <= 2 else _NUMBERS.get(word)
        if number is None:
            continue
        for noun in words[i + 1 : i + 3]:
            if noun in _STOPWORDS:
                break
            counted = _count_of(noun, evidence)
            if counted is None:
                continue
            what, allowed = counted
            if (number == -1 and max(allowed) > 1) or number in allowed:
                break
            return f"counts {word} {noun} where the detector saw {max(allowed)} {what}"
    return None


def contradicts(text: str, level: RiskLevel) -> str | None:
    """Text that says the opposite of the level the event carries: low on a medium, high or
    critical event; high on a low or medium one."""
    lowered = " ".join(_words(text))
    if level != "low" and (match := _LOW_SAYING.search(lowered)):
        return f"says {match.group(0)!r} while the level is {level}"
    if level in {"low", "medium"} and (match := _HIGH_SAYING.search(lowered)):
        return f"says {match.group(0)!r} while the level is {level}"
    return None


def repeats(text: str) -> str | None:
    """The same word three times in a row, a phrase (three words or more) three times, a clause
    (eight words) twice, or one word as more than half of the text."""
    words = _words(text)
    for i in range(len(words) - 2):
        if words[i] == words[i + 1] == words[i + 2]:
            return f"repeats {words[i]!r} three times in a row"
    for n in range(3, 9):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        for gram, times in grams.items():
            # A short phrase three times, or a whole clause (eight words) twice.
            if (times >= 3 or (n == 8 and times >= 2)) and not set(gram) <= _STOPWORDS:
                return f"repeats {' '.join(gram)!r} {times} times"
    content = Counter(w for w in words if w not in _STOPWORDS and not w.isdigit())
    if len(words) >= 6 and content and content.most_common(1)[0][1] * 2 > len(words):
        word, times = content.most_common(1)[0]
        return f"repeats {word!r} {times} times in {len(words)} words"
    return None


def empty(text: str) -> bool:
    """No word at all: "", ", " or punctuation only."""
    return not any(ch.isalpha() for ch in text)


def check(texts: Mapping[str, str], evidence: Evidence, level: RiskLevel) -> str | None:
    """The first problem of the model's ``texts`` (field name: text), or None if they can be shown.

    Each field must have words, must not repeat itself, and no field may name an object or
    threat the evidence does not ground, count differently from the detector, or contradict
    ``level`` (the level the event will carry once the server has settled the score)."""
    for field, text in texts.items():
        if empty(text):
            return f"{field} is empty ({text!r})"
        if (problem := repeats(text)) is not None:
            return f"{field} {problem}"
    for field, text in texts.items():
        for test in (invented, miscounted):
            if (problem := test(text, evidence)) is not None:
                return f"{field} {problem}"
        if (problem := contradicts(text, level)) is not None:
            return f"{field} {problem}"
    return None


@dataclass(frozen=True, slots=True)
class Review:
    """The verdict on a reply: the first ``problem`` (None: it can be shown) and, for a model that
    saw the picture, what it reported beyond the detector (labelled as its observation)."""

    problem: str | None
    observations: tuple[str, ...] = ()


def review(texts: Mapping[str, str], evidence: Evidence, level: RiskLevel) -> Review:
    """``check`` for a model that may have seen the picture: with ``evidence.saw_picture`` an
    object or count the detector did not see becomes an observation instead of a problem."""
    if not evidence.saw_picture:
        return Review(check(texts, evidence, level))
    observations: list[str] = []
    for field, text in texts.items():
        if empty(text):
            return Review(f"{field} is empty ({text!r})")
        if (problem := repeats(text)) is not None:
            return Review(f"{field} {problem}")
    for field, text in texts.items():
        for test in (invented, miscounted):
            if (problem := test(text, evidence)) is not None:
                seen = _as_observation(problem)
                if seen not in observations:
                    observations.append(seen)
        if (problem := contradicts(text, level)) is not None:
            return Review(f"{field} {problem}", tuple(observations))
    return Review(None, tuple(observations))


def _as_observation(problem: str) -> str:
    """ "names a cat not in the evidence: 'cat'" -> "a cat the detector did not see: 'cat'"."""
    if problem.startswith("names "):
        return problem.removeprefix("names ").replace(" not in the evidence", " the detector did not see", 1)
    return problem.removeprefix("counts ").join(("the model counts ", ""))


def lowering_grounds(
    observation: Observation, context: Mapping[str, Any] | None, checks: Iterable[LoweringCheck] = LOWERING_CHECKS
) -> str | None:
    """The first verified reason that allows lowering the rules' score, or None (then no lowering)."""
    for lowering_check in checks:
        if (reason := lowering_check(observation, context)) is not None:
            return reason
    return None
