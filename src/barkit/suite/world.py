"""A small synthetic world of invented people and towns, the facts behind knowledge and reasoning.

The world is fixed by a world seed (``WORLD_SEED`` by default) and never by an item seed, so the
train and test splits ask about the same facts: what a model learns in training is what the test
measures, through different phrasings. Names are built from syllables so that no pretrained
knowledge could help, and the world is small enough for a tiny model to memorise.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from barkit.errors import BarkitError
from barkit.suite.base import rng_for

WORLD_SEED = 0
N_PEOPLE = 48
N_TOWNS = 12

Attribute = Literal["town", "job", "colour", "pet"]
ATTRIBUTES: tuple[Attribute, ...] = ("town", "job", "colour", "pet")

JOBS = ("baker", "farmer", "teacher", "doctor", "painter", "sailor", "miner", "tailor", "singer", "builder")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
PETS = ("cat", "dog", "rabbit", "parrot", "goat", "horse", "turtle", "fish")
REGIONS = ("Norvale", "Sudmark", "Westerby", "Ostland")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s")
_TOWN_ENDINGS = ("ford", "port", "holm", "wick")


@dataclass(frozen=True)
class Person:
    name: str
    town: str
    job: str
    colour: str
    pet: str

    def fact(self, attribute: Attribute) -> str:
        value: str = getattr(self, attribute)
        return value


@dataclass(frozen=True)
class Town:
    name: str
    region: str


@dataclass(frozen=True)
class World:
    """People (each with a town, job, favourite colour and pet) and towns (each in a region)."""

    seed: int
    people: tuple[Person, ...]
    towns: tuple[Town, ...]

    def person(self, name: str) -> Person:
        for p in self.people:
            if p.name == name:
                return p
        raise BarkitError(f"world {self.seed}: no person named {name!r}")

    def town(self, name: str) -> Town:
        for t in self.towns:
            if t.name == name:
                return t
        raise BarkitError(f"world {self.seed}: no town named {name!r}")

    def fact(self, name: str, attribute: Attribute) -> str:
        """The value of ``attribute`` for the person ``name``."""
        return self.person(name).fact(attribute)

    def region_of(self, name: str) -> str:
        """The region of the home town of the person ``name`` (a two-hop fact)."""
        return self.town(self.person(name).town).region


def syllable_name(rng: random.Random, syllables: int) -> str:
    """An invented, pronounceable word such as ``Bakon`` or ``Tirelu``."""
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _distinct_names(
    rng: random.Random, count: int, make: Callable[[random.Random], str], taken: list[str]
) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = make(rng)
        if name not in names and name not in taken:
            names.append(name)
    return names


@lru_cache(maxsize=8)
def make_world(seed: int = WORLD_SEED) -> World:
    """The world for ``seed``: the same seed gives the same world in any process."""
    rng = rng_for("world", "world", seed)
    town_names = _distinct_names(
        rng, N_TOWNS, lambda r: syllable_name(r, 2).rstrip("nrls") + r.choice(_TOWN_ENDINGS), []
    )
    # Every region gets towns and every town gets people, so each value is actually used.
    towns = tuple(Town(name, REGIONS[i % len(REGIONS)]) for i, name in enumerate(town_names))
    names = _distinct_names(rng, N_PEOPLE, lambda r: syllable_name(r, 2), town_names)
    people = tuple(
        Person(
            name=name,
            town=town_names[i % N_TOWNS] if i < N_TOWNS else rng.choice(town_names),
            job=rng.choice(JOBS),
            colour=rng.choice(COLOURS),
            pet=rng.choice(PETS),
        )
        for i, name in enumerate(names)
    )
    return World(seed, people, towns)
