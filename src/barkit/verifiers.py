"""Verifiers by name, for RLVR rewards and for evaluation on a user's own data.

A verifier scores a completion against an :class:`~barkit.userdata.RlRow` (its ``answer`` and
``meta``) with a float in [0, 1]. Get one with :func:`get_verifier`:

* ``exact``: the completion equals the answer once runs of whitespace are collapsed and the ends
  stripped (case matters).
* ``numeric``: the completion's final number equals the answer's, within ``meta["tolerance"]``
  (relative or absolute, default 1e-6). The final number is the first one after the last
  ``Answer:`` marker when there is one (case-insensitive), else the last number in the text;
  thousands commas (``1,234``), signs, decimals and exponents are read.
* ``regex``: the answer is a Python regular expression that must match the WHOLE stripped
  completion (``re.fullmatch`` with ``re.DOTALL``); write ``.*word.*`` to search instead.
* ``tool-call``: the first ``<tool_call>{"name", "arguments"}</tool_call>`` in the completion
  passes the micro-suite's BFCL-style AST check (:func:`barkit.suite.tools.match_call`): same
  function, every argument present with the same value, nothing extra. The answer is a call in
  the same form, or its bare JSON object. The schema comes from ``meta["tools"]`` (function-calling
  schemas) when the row has one, else each expected argument's type is read from its value.
* ``python-tests``: the completion's code (its first fenced block, or all of it) runs in barkit's
  sandbox against ``meta["tests"]``: assert statements (MBPP style), or
  ``{"args": [...], "expected": ...}`` objects for the function ``meta["function"]`` (what
  ``barkit data export --category code --kind rl`` writes). The score is the fraction passed.
* ``module.path:function`` or ``path/to/file.py:function``: a user's own scoring function,
  called as ``function(completion: str, row: RlRow) -> float``. **This imports and runs the
  user's own code in barkit's process, with the user's rights and outside the sandbox**: name
  only code you trust. It is always named explicitly (a flag or a recipe field), never found
  by a YAML tag.

A verifier that raises on a row, or returns something other than a number in [0, 1], stops the
run with a :class:`~barkit.errors.VerifierError` naming the verifier and the row.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barkit.errors import ConfigError, VerifierError
from barkit.suite.code import extract_code, run_asserts, run_tests
from barkit.suite.tools import CALL_CLOSE, CALL_OPEN, TOOLS, Param, Tool, match_call, parse_call
from barkit.userdata import RlRow

ScoreFn = Callable[[str, RlRow], float]
BUILTIN = ("exact", "numeric", "regex", "tool-call", "python-tests")
DEFAULT_TOLERANCE = 1e-6
NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
# JSON-schema types the AST check understands, and the type a reference value implies
SCHEMA_TYPES = ("string", "integer", "number", "boolean", "array", "object")


@dataclass(frozen=True)
class Verifier:
    """A named scoring function; :meth:`score` turns its failures into one-line errors."""

    name: str
    fn: ScoreFn

    def score(self, completion: str, row: RlRow) -> float:
        """The completion's score in [0, 1]; a VerifierError naming the row if the function fails."""
        where = row.where or "a row"
        try:
            value = self.fn(completion, row)
        except Exception as e:
            detail = str(e).strip().splitlines()
            raise VerifierError(
                f"verifier {self.name!r} failed on {where}: {type(e).__name__}: {detail[0] if detail else ''}"
            ) from None
        # any real number counts (a bool, a numpy float); NaN fails the range check
        if not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise VerifierError(
                f"verifier {self.name!r} returned {value!r} on {where}, not a score in [0, 1]"
            )
        return float(value)


def get_verifier(name: str) -> Verifier:
    """A built-in verifier by name, or a user function named ``module.path:function``."""
    builtin = _builtins().get(name)
    if builtin is not None:
        return Verifier(name, builtin)
    if ":" in name:
        return Verifier(name, load_user_function(name))
    known = ", ".join(BUILTIN)
    raise ConfigError(f"unknown verifier {name!r}; known: {known}, or a function as module.path:function")


def _builtins() -> dict[str, ScoreFn]:
    return {
        "exact": exact,
        "numeric": numeric,
        "regex": regex,
        "tool-call": tool_call,
        "python-tests": python_tests,
    }


def load_user_function(spec: str) -> ScoreFn:
    """Import ``module.path:function`` (or ``file.py:function``): this runs the user's own code."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"verifier {spec!r}: expected module.path:function")
    try:
        module = _import(module_name)
    except VerifierError:
        raise
    except Exception as e:  # the user's module may fail in any way while it imports
        raise VerifierError(
            f"verifier {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise VerifierError(f"verifier {spec!r}: {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def _import(module_name: str) -> Any:
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name)
    if not path.is_file():
        raise VerifierError(f"verifier file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"barkit_user_verifier_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise VerifierError(f"verifier file {path} cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ built-ins


def exact(completion: str, row: RlRow) -> float:
    """1.0 when the texts are equal up to whitespace runs and the ends."""
    return float(" ".join(completion.split()) == " ".join(row.answer.split()))


def final_number(text: str) -> float | None:
    """The number a text ends on: first after the last ``Answer:`` marker, else the last one."""
    markers = list(ANSWER_MARKER.finditer(text))
    if markers:
        found = NUMBER.search(text, markers[-1].end())
        return None if found is None else float(found.group().replace(",", ""))
    numbers = NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def numeric(completion: str, row: RlRow) -> float:
    """1.0 when the completion's final number equals the answer's within the tolerance."""
    expected = final_number(row.answer)
    if expected is None:
        raise ValueError(f"the answer {row.answer!r} holds no number")
    got = final_number(completion)
    tolerance = float(row.meta.get("tolerance", DEFAULT_TOLERANCE))
    return float(got is not None and math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance))


def regex(completion: str, row: RlRow) -> float:
    """1.0 when the answer's pattern matches the whole stripped completion."""
    return float(re.fullmatch(row.answer, completion.strip(), flags=re.DOTALL) is not None)


def tool_call(completion: str, row: RlRow) -> float:
    """1.0 when the completion's first call passes the AST check against the answer's call."""
    text = row.answer if CALL_OPEN in row.answer else CALL_OPEN + row.answer + CALL_CLOSE
    expected = parse_call(text)
    if expected is None:
        raise ValueError(f'the answer is not a tool call ({CALL_OPEN}{{"name": ..., "arguments": {{...}}}})')
    call = parse_call(completion)
    if call is None:
        return 0.0
    tool = _tool_for(expected, row.meta)
    return float(match_call(call, tool, expected["arguments"]))


def _tool_for(expected: dict[str, Any], meta: dict[str, Any]) -> Tool:
    """The schema to check against: the row's ``tools``, the suite's catalogue, or the answer's values."""
    name = expected["name"]
    schemas = meta.get("tools")
    if isinstance(schemas, str):
        schemas = json.loads(schemas)
    if schemas:
        for schema in schemas:
            function = schema.get("function", schema)  # OpenAI wraps it in {"type": "function", ...}
            if function.get("name") == name:
                return tool_from_schema(function)
        raise ValueError(f"the row's 'tools' have no schema for {name!r}")
    if meta.get("category") == "tool_use" and name in TOOLS:  # a row exported from the suite
        return TOOLS[name]
    params = tuple(Param(key, _type_of(value)) for key, value in expected["arguments"].items())
    return Tool(name, "", params, (), ())


def tool_from_schema(schema: dict[str, Any]) -> Tool:
    """A :class:`Tool` from a function-calling schema (``name``, ``parameters``: a JSON schema)."""
    parameters = schema.get("parameters") or {}
    required = set(parameters.get("required") or ())
    params = []
    for key, prop in (parameters.get("properties") or {}).items():
        kind = prop.get("type", "string")
        if isinstance(kind, list):  # ["string", "null"]: an optional value of one type
            kind = next((k for k in kind if k != "null"), "string")
        if kind not in SCHEMA_TYPES:
            raise ValueError(f"parameter {key!r} of {schema.get('name')!r} has unsupported type {kind!r}")
        # match_call compares enum members lower-cased, as the suite's catalogue spells them
        enum = tuple(str(v).lower() for v in prop.get("enum") or ())
        params.append(Param(key, kind, key in required, enum))
    return Tool(str(schema.get("name")), str(schema.get("description", "")), tuple(params), (), ())


def _type_of(value: Any) -> str:
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str)):
        if isinstance(value, types):
            return kind
    if isinstance(value, (list, dict)):
        return "array" if isinstance(value, list) else "object"
    raise ValueError(f"the answer's argument value {value!r} has no JSON-schema type")


def python_tests(completion: str, row: RlRow) -> float:
    """Fraction of the row's tests that the completion's code passes, run in the sandbox."""
    tests = row.meta.get("tests")
    if isinstance(tests, str):
        tests = json.loads(tests)
    if not isinstance(tests, list) or not tests:
        raise ValueError("the row has no 'tests' list")
    code = extract_code(completion)
    if all(isinstance(t, str) for t in tests):
        return run_asserts(code, tests)
    function = row.meta.get("function") or row.meta.get("entry_point")
    if not isinstance(function, str) or not all(
        isinstance(t, dict) and "args" in t and "expected" in t for t in tests
    ):
        raise ValueError("'tests' must be assert statements, or {args, expected} objects with a 'function'")
    return run_tests(code, function, tests)
