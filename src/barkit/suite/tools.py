"""The tool-use category: pick the right tool from a short list and call it with the right arguments.

A catalogue of invented tools, each with a JSON schema. An item's prompt lists two or three of
them as compact one-line signatures and makes a request; the answer is exactly one call,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. The two tags are special tokens
that the base vocabulary lacks: the tool expert adds them at SFT (:data:`TOOL_TOKENS`).

The verifier follows BFCL's AST check: parse the JSON between the tags, the name must match,
every argument the request asked for must be present with the right value (strings compared
case-insensitively after stripping, numbers by value, enums case-insensitively), no argument the
schema lacks, and an optional argument the request did not ask for must still be valid for its
schema if the call includes it. A call scores 1.0 or 0.0.

Train and test items use disjoint request phrasings, and free-text arguments (cities, names,
topics) and numbers come from disjoint value pools, so a test call cannot be recalled.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from barkit.suite.base import Category, Item, Split, rng_for

TOOL_TOKENS = ("<tool_call>", "</tool_call>")
CALL_OPEN, CALL_CLOSE = TOOL_TOKENS


@dataclass(frozen=True)
class Param:
    """One parameter of a tool's JSON schema."""

    name: str
    type: str  # "string", "integer", "number", "boolean" (and "array", "object" in users' schemas)
    required: bool = True
    enum: tuple[str, ...] = ()
    #: Value pool for generated requests; the split takes a disjoint part of it (see _pool).
    values: tuple[Any, ...] = ()

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.enum:
            out["enum"] = list(self.enum)
        return out

    def signature(self) -> str:
        kind = "|".join(self.enum) if self.enum else self.type
        return f"{self.name}{'' if self.required else '?'}: {kind}"


@dataclass(frozen=True)
class Tool:
    """An invented tool: its schema and the request phrasings that should call it."""

    name: str
    description: str
    params: tuple[Param, ...]
    #: Request templates: ``{param}`` slots; a template naming an optional param asks for it.
    train_requests: tuple[str, ...]
    test_requests: tuple[str, ...]
    by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})

    def schema(self) -> dict[str, Any]:
        """The JSON schema, in the usual function-calling shape."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": {
                "type": "object",
                "properties": {p.name: p.schema() for p in self.params},
                "required": [p.name for p in self.params if p.required],
            },
        }

    def signature(self) -> str:
        """One compact line for a prompt: ``name(arg: type, opt?: a|b) - description``."""
        return f"{self.name}({', '.join(p.signature() for p in self.params)}) - {self.description}"


CITIES = (
    "Paris",
    "Tokyo",
    "Lima",
    "Oslo",
    "Cairo",
    "Rome",
    "Delhi",
    "Berlin",
    "Madrid",
    "Dublin",
    "Seoul",
    "Quito",
)
PEOPLE = ("Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo")
PLACES = ("Blue Door", "Green Leaf", "Red Fox", "Old Mill", "Sea Star", "Gold Fork", "Little Pot", "Sun Deck")
TOPICS = (
    "cheap flights",
    "bread recipes",
    "bike repair",
    "tide times",
    "chess openings",
    "bird songs",
    "tax forms",
    "tent sizes",
)
ARTISTS = (
    "The Owls",
    "Nina Gray",
    "Blue River",
    "Tom Bell",
    "The Kites",
    "Mara Lane",
    "Echo Park",
    "Sam Stone",
)
ROOMS = ("kitchen", "bedroom", "garage", "office", "hallway", "bathroom", "attic", "porch")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CURRENCIES = ("usd", "eur", "gbp", "yen")
LANGUAGES = ("french", "spanish", "german", "italian")
PHRASES = (
    "good morning",
    "thank you",
    "where is the station",
    "see you soon",
    "the bill please",
    "how much is it",
)
SYMBOLS = ("ACME", "ZETA", "NOVA", "BOLT", "KITE", "MOSS", "PINE", "RUBY")

CATALOGUE = (
    Tool(
        "get_weather",
        "current weather for a city",
        (Param("city", "string", values=CITIES), Param("unit", "string", False, ("celsius", "fahrenheit"))),
        (
            "What is the weather in {city}?",
            "Tell me the weather in {city} in {unit}.",
            "How warm is it in {city} right now?",
        ),
        ("Weather report for {city}, please.", "I need the weather in {city} in {unit}."),
    ),
    Tool(
        "set_timer",
        "start a countdown timer",
        (
            Param("minutes", "integer", values=tuple(range(1, 61))),
            Param("label", "string", False, values=("tea", "pasta", "laundry", "nap", "bread", "study")),
        ),
        (
            "Set a timer for {minutes} minutes.",
            "Start a {minutes} minute timer called {label}.",
            "Count down {minutes} minutes for me.",
        ),
        ("Can you time {minutes} minutes?", "I need a {label} timer of {minutes} minutes."),
    ),
    Tool(
        "send_email",
        "send a short email",
        (
            Param("to", "string", values=PEOPLE),
            Param(
                "subject",
                "string",
                values=("lunch", "the meeting", "the report", "holiday plans", "the party", "rent"),
            ),
        ),
        (
            "Email {to} about {subject}.",
            "Send {to} an email with the subject {subject}.",
            "Write to {to} about {subject}.",
        ),
        ("Drop {to} a mail regarding {subject}.", "Please mail {to}, subject: {subject}."),
    ),
    Tool(
        "convert_currency",
        "convert money between currencies",
        (
            Param("amount", "number", values=tuple(range(5, 500, 5))),
            Param("source", "string", enum=CURRENCIES),
            Param("target", "string", enum=CURRENCIES),
        ),
        (
            "Convert {amount} {source} to {target}.",
            "How much is {amount} {source} in {target}?",
            "Change {amount} {source} into {target}.",
        ),
        ("What do {amount} {source} come to in {target}?", "Exchange {amount} {source} for {target}."),
    ),
    Tool(
        "play_music",
        "play songs by an artist",
        (Param("artist", "string", values=ARTISTS), Param("shuffle", "boolean", False)),
        ("Play some {artist}.", "Put on {artist} with shuffle {shuffle}.", "I want to hear {artist}."),
        ("Could you play music by {artist}?", "Start {artist}, shuffle set to {shuffle}."),
    ),
    Tool(
        "book_table",
        "reserve a table at a restaurant",
        (
            Param("restaurant", "string", values=PLACES),
            Param("people", "integer", values=tuple(range(1, 13))),
            Param("time", "string", False, values=("18:00", "19:00", "19:30", "20:00", "20:30", "21:00")),
        ),
        (
            "Book a table for {people} at {restaurant}.",
            "Reserve {restaurant} for {people} people at {time}.",
            "Get me a table at {restaurant} for {people}.",
        ),
        ("I need {restaurant} for a group of {people}.", "Table at {restaurant}, {people} guests, {time}."),
    ),
    Tool(
        "translate_text",
        "translate a phrase",
        (Param("text", "string", values=PHRASES), Param("language", "string", enum=LANGUAGES)),
        (
            "Translate {text} into {language}.",
            "How do you say {text} in {language}?",
            "Put {text} in {language}.",
        ),
        ("What is {text} in {language}?", "Give me the {language} for {text}."),
    ),
    Tool(
        "search_web",
        "search the web",
        (
            Param("query", "string", values=TOPICS),
            Param("limit", "integer", False, values=tuple(range(1, 21))),
        ),
        ("Search the web for {query}.", "Find {limit} results about {query}.", "Look up {query} online."),
        ("Do a web search on {query}.", "Show me {limit} pages on {query}."),
    ),
    Tool(
        "add_event",
        "add an event to the calendar",
        (
            Param(
                "title",
                "string",
                values=("dentist", "gym", "piano lesson", "team call", "dinner", "haircut", "yoga", "exam"),
            ),
            Param("day", "string", enum=DAYS),
        ),
        ("Add {title} to my calendar on {day}.", "Put {title} on {day}.", "Schedule {title} for {day}."),
        ("Note {title} in the calendar for {day}.", "I have {title} on {day}, save it."),
    ),
    Tool(
        "set_light",
        "switch on a light in a room",
        (
            Param("room", "string", values=ROOMS),
            Param("brightness", "integer", False, values=tuple(range(10, 101, 10))),
        ),
        (
            "Turn on the light in the {room}.",
            "Set the {room} light to {brightness} percent.",
            "Lights on in the {room}.",
        ),
        ("Switch the {room} light on.", "Make the {room} light {brightness} percent bright."),
    ),
    Tool(
        "get_stock",
        "latest price of a stock",
        (Param("symbol", "string", values=SYMBOLS),),
        ("What is {symbol} trading at?", "Get the stock price of {symbol}.", "How is {symbol} stock doing?"),
        ("Price check on {symbol} shares.", "Quote me {symbol}."),
    ),
)
TOOLS = {tool.name: tool for tool in CATALOGUE}


def _pool(values: tuple[Any, ...], split: Split) -> tuple[Any, ...]:
    """Disjoint train/test parts of a value pool: every fourth value belongs to test."""
    return tuple(v for i, v in enumerate(values) if (i % 4 == 3) == (split == "test"))


def _draw(param: Param, split: Split, rng: random.Random) -> Any:
    if param.enum:  # enums are closed sets: both splits use every member
        return rng.choice(param.enum)
    if param.type == "boolean":
        return rng.choice((True, False))
    return rng.choice(_pool(param.values, split))


def _spoken(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """The reference form of a call: the JSON object between the two special tokens."""
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}) + CALL_CLOSE


#: what starts the request's line in :func:`tools_prompt` (after the signatures)
REQUEST_MARK = "Request: "


def tools_prompt(listed: list[Tool], request: str) -> str:
    """The category's prompt: the listed tools' signatures, one a line, then the request."""
    return "Tools:\n" + "\n".join(t.signature() for t in listed) + f"\n{REQUEST_MARK}{request}"


def _make_item(tool: Tool, split: Split, rng: random.Random, index: int) -> Item:
    template = rng.choice(tool.train_requests if split == "train" else tool.test_requests)
    arguments: dict[str, Any] = {}
    for param in tool.params:
        if "{" + param.name + "}" in template:
            arguments[param.name] = _draw(param, split, rng)
    if tool.name == "convert_currency":  # a conversion to the same currency is no request
        arguments["target"] = rng.choice([c for c in CURRENCIES if c != arguments["source"]])
    request = template.format(**{k: _spoken(v) for k, v in arguments.items()})
    others = rng.sample([t for t in CATALOGUE if t is not tool], rng.randint(1, 2))
    listed = [tool, *others]
    rng.shuffle(listed)
    prompt = tools_prompt(listed, request)
    meta = {"tool": tool.name, "arguments": arguments, "available": [t.name for t in listed]}
    return Item("tool_use", split, f"tool_use-{split}-{index}", prompt, call_text(tool.name, arguments), meta)


def parse_call(completion: str) -> dict[str, Any] | None:
    """The first call in a completion as ``{"name": str, "arguments": dict}``, or None."""
    start = completion.find(CALL_OPEN)
    end = completion.find(CALL_CLOSE, start + len(CALL_OPEN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    try:
        call = json.loads(completion[start + len(CALL_OPEN) : end])
    except (ValueError, RecursionError):
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return {"name": call["name"].strip(), "arguments": arguments}


def valid_value(param: Param, value: Any) -> bool:
    """Whether ``value`` has the parameter's JSON type (and is one of its enum members)."""
    if param.type == "boolean":
        return isinstance(value, bool)
    if param.type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if param.type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if param.type in ("array", "object"):  # a user's schema; the catalogue has neither
        return isinstance(value, list if param.type == "array" else dict)
    if not isinstance(value, str):
        return False
    return not param.enum or value.strip().lower() in param.enum


def same_value(param: Param, got: Any, expected: Any) -> bool:
    """Type-checked comparison: strings without case or outer spaces, numbers by value."""
    if not valid_value(param, got):
        return False
    if param.type == "string":
        return str(got).strip().lower() == str(expected).strip().lower()
    return bool(got == expected)


def check_call(call: dict[str, Any], tool_name: str, expected: dict[str, Any]) -> bool:
    """BFCL-style AST check of a parsed call against the reference arguments of a catalogue tool."""
    tool = TOOLS.get(tool_name)
    return tool is not None and match_call(call, tool, expected)


def match_call(call: dict[str, Any], tool: Tool, expected: dict[str, Any]) -> bool:
    """BFCL-style AST check of a parsed call against ``tool``'s schema and the reference arguments."""
    if call["name"] != tool.name:
        return False
    arguments = call["arguments"]
    if any(key not in tool.by_name for key in arguments):
        return False
    for param in tool.params:
        asked = param.name in expected
        if (param.required or asked) and param.name not in arguments:
            return False
        if param.name not in arguments:
            continue
        value = arguments[param.name]
        if not (same_value(param, value, expected[param.name]) if asked else valid_value(param, value)):
            return False
    return True


class ToolCategory(Category):
    """Function calling with invented tools, checked like BFCL's AST category."""

    name = "tool_use"
    has_text = False

    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        rng = rng_for(self.name, split, seed)
        order: list[Tool] = []
        items = []
        for i in range(n):
            if not order:  # every tool once per round, in a fresh order each round
                order = list(CATALOGUE)
                rng.shuffle(order)
            items.append(_make_item(order.pop(), split, rng, i))
        return items

    def score(self, item: Item, completion: str) -> float:
        """1.0 for a call that passes the AST check, else 0.0. Never raises."""
        try:
            call = parse_call(completion)
            if call is None:
                return 0.0
            return 1.0 if check_call(call, item.meta["tool"], item.meta["arguments"]) else 0.0
        except Exception:
            return 0.0


CATEGORY = ToolCategory()
