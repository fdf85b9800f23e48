"""``@tool``: marking, validation, collection over the MRO, and the JSON schemas the LLM gets.

The module uses postponed annotations on purpose: every annotation a tool has here is a string
that ``pipecat_workers.pipeline.tools`` must resolve, as in most real worker modules. The
mapping table builds its functions with real type objects instead.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    NewType,
    NotRequired,
    Optional,
    TypedDict,
    Union,
)

import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter

from pipecat_workers.errors import ConfigurationError
from pipecat_workers.pipeline.tools import (
    ToolOptions,
    ToolSpec,
    collect_tools,
    function_schema,
    tool,
    tools_schema,
)

if TYPE_CHECKING:  # never imported at run time: resolving ``params`` must not be needed
    from pipecat.services.llm_service import FunctionCallParams

_EMPTY = inspect.Parameter.empty


# Types used by the mapping table and the docstring tests -------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mood(enum.StrEnum):
    CALM = "calm"
    ANGRY = "angry"


class Mixed(enum.Enum):
    ONE = 1
    TWO = "two"


class Point(enum.Enum):
    ORIGIN = (0, 0)  # not a JSON scalar


class Address(TypedDict):
    """A postal address.

    Attributes:
        street: The street and number.
    """

    street: str
    zip: NotRequired[int]


class Partial(TypedDict, total=False):
    a: int
    b: list[str]


class Node(TypedDict):
    name: str
    children: list[Node]


@dataclass
class Booking:
    """A room booking.

    Attributes:
        room (str): The room's name.
        nights: How many nights.
    """

    room: Any  # no JSON meaning: the docstring type above is used
    nights: int = 1
    guests: list[str] = field(default_factory=list)
    token: str = field(default="", init=False)


class Opaque:
    """A class with no JSON meaning."""


UserId = NewType("UserId", str)


def schema_of(annotation: object = _EMPTY, default: object = _EMPTY) -> dict[str, Any]:
    """The property schema of one parameter ``x`` annotated with a real (unstringified) type."""

    async def fn(self, params, x): ...

    fn.__annotations__ = {} if annotation is _EMPTY else {"x": annotation}
    if default is not _EMPTY:
        fn.__defaults__ = (default,)
    return function_schema(fn).properties["x"]


# The type mapping ---------------------------------------------------------------------------

STRING, INTEGER, NUMBER, NULL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "null"},
)

BOOKING = {
    "type": "object",
    "properties": {
        "room": {"type": "string", "description": "The room's name."},
        "nights": {"type": "integer", "description": "How many nights."},
        "guests": {"type": "array", "items": STRING},
    },
    "required": ["room"],
}

MAPPING = [
    (str, STRING),
    (int, INTEGER),
    (float, NUMBER),
    (bool, {"type": "boolean"}),
    (dict, {"type": "object"}),
    (list, {"type": "array"}),
    (tuple, {"type": "array"}),
    (typing.List, {"type": "array"}),  # noqa: UP006
    (collections.abc.Sequence, {"type": "array"}),
    (collections.abc.Mapping, {"type": "object"}),
    (typing.Dict, {"type": "object"}),  # noqa: UP006
    (list[int], {"type": "array", "items": INTEGER}),
    (typing.List[str], {"type": "array", "items": STRING}),  # noqa: UP006
    (tuple[str, ...], {"type": "array", "items": STRING}),
    (
        tuple[int, str],
        {"type": "array", "items": {"anyOf": [INTEGER, STRING]}, "minItems": 2, "maxItems": 2},
    ),
    (set[float], {"type": "array", "items": NUMBER}),
    (frozenset[str], {"type": "array", "items": STRING}),
    (collections.abc.Sequence[str], {"type": "array", "items": STRING}),
    (typing.Sequence[int], {"type": "array", "items": INTEGER}),
    (list[list[int]], {"type": "array", "items": {"type": "array", "items": INTEGER}}),
    (list[Any], {"type": "array"}),
    (dict[str, int], {"type": "object", "additionalProperties": INTEGER}),
    (
        collections.abc.Mapping[str, list[str]],
        {"type": "object", "additionalProperties": {"type": "array", "items": STRING}},
    ),
    (dict[str, Any], {"type": "object"}),
    (Union[int, str], {"anyOf": [INTEGER, STRING]}),  # noqa: UP007
    (int | str, {"anyOf": [INTEGER, STRING]}),
    (Optional[int], {"anyOf": [INTEGER, NULL]}),  # noqa: UP045
    (int | None, {"anyOf": [INTEGER, NULL]}),
    (list[int | None], {"type": "array", "items": {"anyOf": [INTEGER, NULL]}}),
    (int | Opaque, {}),  # a union with an unknown member is unknown
    (UserId, STRING),
    (Annotated[int, "metadata"], INTEGER),
    (Color, {"type": "string", "enum": ["red", "green"]}),
    (Level, {"type": "integer", "enum": [1, 2]}),
    (Mood, {"type": "string", "enum": ["calm", "angry"]}),
    (Mixed, {"enum": [1, "two"]}),
    (Point, {}),
    (Literal["fast", "slow"], {"type": "string", "enum": ["fast", "slow"]}),
    (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
    (Literal[True], {"type": "boolean", "enum": [True]}),
    (Literal["a", None], {"enum": ["a", None]}),  # noqa: PYI061
    (Literal["a"] | None, {"anyOf": [{"type": "string", "enum": ["a"]}, NULL]}),
    (Literal[Color.RED], {"type": "string", "enum": ["red"]}),
    (list[Literal["x", "y"]], {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}}),
    (
        Address,
        {
            "type": "object",
            "properties": {
                "street": {"type": "string", "description": "The street and number."},
                "zip": INTEGER,
            },
            "required": ["street"],
        },
    ),
    (
        Partial,
        {"type": "object", "properties": {"a": INTEGER, "b": {"type": "array", "items": STRING}}},
    ),
    (
        Node,
        {
            "type": "object",
            "properties": {
                "name": STRING,
                "children": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["name", "children"],
        },
    ),
    (Booking, BOOKING),
    (list[Booking], {"type": "array", "items": BOOKING}),
    (Any, {}),
    (object, {}),
    (Opaque, {}),
]


@pytest.mark.parametrize(("annotation", "expected"), MAPPING, ids=[str(row[0]) for row in MAPPING])
def test_annotation_maps_to_json_schema(annotation, expected):
    assert schema_of(annotation) == expected


def test_missing_annotation_is_any():
    assert schema_of() == {}


@pytest.mark.parametrize("annotation", [Optional[int], int | None])  # noqa: UP045
def test_optional_with_none_default_is_the_inner_type_and_not_required(annotation):
    async def fn(self, params, x=None): ...

    fn.__annotations__ = {"x": annotation}
    schema = function_schema(fn)
    assert schema.properties == {"x": INTEGER}
    assert schema.required == []


def test_union_with_none_default_drops_only_none():
    assert schema_of(int | str | None, default=None) == {"anyOf": [INTEGER, STRING]}
    assert schema_of(Color | None, default=None) == {"type": "string", "enum": ["red", "green"]}
    assert schema_of(list[int | None] | None, default=None) == {
        "type": "array",
        "items": {"anyOf": [INTEGER, NULL]},
    }


def test_optional_with_another_default_can_still_be_null():
    assert schema_of(int | None, default=5) == {"anyOf": [INTEGER, NULL]}


# Docstrings -----------------------------------------------------------------------------------


class Documented:
    @tool
    async def book(self, params, room, nights: int, note: Opaque, tags, legacy, sneaky):
        """Book a room.

        The booking is held for ten minutes.
        It is confirmed by the front desk.

        Args:
            room (str): The room's name.
            nights (str): Annotated as int, which wins.
            note (list[str]): Notes for the desk.
            tags (Color): Labels.
            legacy (list of str): Not something we can evaluate.
            sneaky (explode()): Never called.
            ghost (int): No such parameter; ignored.
        """


EXPLODED = []


def explode():
    EXPLODED.append(True)
    return int


def test_description_joins_summary_and_body_with_a_blank_line():
    schema = function_schema(Documented.book)
    assert schema.description == (
        "Book a room.\n\nThe booking is held for ten minutes.\nIt is confirmed by the front desk."
    )


def test_docstring_types_are_honoured_and_annotations_win():
    properties = function_schema(Documented.book).properties
    assert properties["room"] == {"type": "string", "description": "The room's name."}
    assert properties["nights"] == {
        "type": "integer",
        "description": "Annotated as int, which wins.",
    }
    assert properties["note"] == {
        "type": "array",
        "items": STRING,
        "description": "Notes for the desk.",
    }
    assert properties["tags"] == {
        "type": "string",
        "enum": ["red", "green"],
        "description": "Labels.",
    }
    assert properties["legacy"] == {"description": "Not something we can evaluate."}


def test_docstring_types_are_never_called():
    properties = function_schema(Documented.book).properties
    assert properties["sneaky"] == {"description": "Never called."}
    assert EXPLODED == []


def test_unknown_docstring_entries_are_ignored():
    assert "ghost" not in function_schema(Documented.book).properties


def test_rest_docstring_types_and_descriptions():
    class Rest:
        @tool
        async def call(self, params, number):
            """Call someone.

            :param str number: The phone number.
            """

    assert function_schema(Rest.call).properties == {
        "number": {"type": "string", "description": "The phone number."}
    }


def test_no_docstring_gives_empty_descriptions():
    class Bare:
        @tool
        async def ping(self, params, host: str): ...

    schema = function_schema(Bare.ping)
    assert schema.description == ""
    assert schema.properties == {"host": STRING}


def test_summary_only_description():
    class Short:
        @tool
        async def ping(self, params):
            """Ping the server."""

    assert function_schema(Short.ping).description == "Ping the server."


# Required, names, resolution -----------------------------------------------------------------


def test_required_lists_parameters_without_defaults_in_order():
    class Worker:
        @tool
        async def search(self, params, query: str, limit: int = 5, *, lang: str, strict=False): ...

    schema = function_schema(Worker.search)
    assert schema.name == "search"
    assert list(schema.properties) == ["query", "limit", "lang", "strict"]
    assert schema.required == ["query", "lang"]


class Resolving:
    class Mode(enum.Enum):
        QUICK = "quick"
        FULL = "full"

    @tool
    async def run(self, params: FunctionCallParams, mode: Mode, target: DefinedLater) -> None:
        """Run something."""


class DefinedLater(enum.Enum):
    ONLY = 1


def test_postponed_annotations_resolve_in_the_module_and_the_class():
    schema = collect_tools(Resolving)["run"].schema
    assert schema.properties == {
        "mode": {"type": "string", "enum": ["quick", "full"]},
        "target": {"type": "integer", "enum": [1]},
    }


def test_names_nested_in_the_class_need_the_owner():
    assert function_schema(Resolving.run).properties["mode"] == {}


# The realistic tool, as OpenAI receives it -----------------------------------------------------


class Greeter:
    @tool(cancel_on_interruption=False)
    async def transfer_to_agent(self, params: FunctionCallParams, agent: str, reason: str) -> None:
        """Transfer the user to another agent.

        Use this when the user asks for something another agent handles.

        Args:
            agent: The agent to transfer to.
            reason: Why the user is being transferred.
        """


TRANSFER = {
    "name": "transfer_to_agent",
    "description": "Transfer the user to another agent.\n\n"
    "Use this when the user asks for something another agent handles.",
    "parameters": {
        "type": "object",
        "properties": {
            "agent": {"type": "string", "description": "The agent to transfer to."},
            "reason": {"type": "string", "description": "Why the user is being transferred."},
        },
        "required": ["agent", "reason"],
    },
}


def test_realistic_tool_default_dict():
    assert collect_tools(Greeter)["transfer_to_agent"].schema.to_default_dict() == TRANSFER


def test_realistic_tool_in_openai_format():
    schema = tools_schema(collect_tools(Greeter).values())
    assert OpenAILLMAdapter().to_provider_tools_format(schema) == [
        {"type": "function", "function": TRANSFER}
    ]


# The decorator and options ---------------------------------------------------------------------


def test_bare_decorator_marks_without_wrapping():
    async def greet(self, params): ...

    async def other(self, params): ...

    assert tool(greet) is greet
    assert tool(timeout_secs=1)(other) is other
    assert collect_tools(type("W", (), {"greet": greet}))["greet"].options == ToolOptions()


def test_decorator_with_parentheses_records_options():
    class Worker:
        @tool()
        async def plain(self, params): ...

        @tool(cancel_on_interruption=False, timeout_secs=7)
        async def slow(self, params): ...

    tools = collect_tools(Worker)
    assert tools["plain"].options == ToolOptions(cancel_on_interruption=True, timeout_secs=None)
    assert tools["slow"].options == ToolOptions(cancel_on_interruption=False, timeout_secs=7)
    assert tools["slow"].attr == "slow"
    assert isinstance(tools["slow"].schema, FunctionSchema)


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        ToolOptions().timeout_secs = 3  # type: ignore[misc]


# Validation -----------------------------------------------------------------------------------


def raises_naming(method: str):
    """Expect a one-line ConfigurationError that names ``Class.method``."""
    return pytest.raises(ConfigurationError, match=rf"^@tool {re.escape(method)}: [^\n]*$")


def test_sync_tool_is_refused_when_the_class_is_defined():
    with raises_naming("Sync.greet") as info:

        class Sync:
            @tool
            def greet(self, params): ...

    assert "async def" in str(info.value)


def test_async_generator_is_refused():
    with raises_naming("Gen.stream"):

        class Gen:
            @tool
            async def stream(self, params):
                yield 1


@pytest.mark.parametrize(
    "signature",
    ["self, parameters, x", "self", "self, x, params", "params"],
)
def test_first_parameter_after_self_must_be_params(signature):
    namespace: dict[str, Any] = {}
    exec(f"async def greet({signature}): ...", namespace)
    greet = namespace["greet"]
    greet.__qualname__ = "Worker.greet"
    with raises_naming("Worker.greet") as info:
        tool(greet)
    assert "'params'" in str(info.value)


@pytest.mark.parametrize("signature", ["*args", "**kwargs", "x, /, y", "x, *rest"])
def test_arguments_that_cannot_be_named_are_refused(signature):
    namespace: dict[str, Any] = {}
    exec(f"async def greet(self, params, {signature}): ...", namespace)
    greet = namespace["greet"]
    greet.__qualname__ = "Worker.greet"
    with raises_naming("Worker.greet") as info:
        tool(greet)
    assert "by name" in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, 0.0, math.nan, True, "5"])
def test_timeout_must_be_positive(timeout):
    with raises_naming("Timed.slow") as info:

        class Timed:
            @tool(timeout_secs=timeout)
            async def slow(self, params): ...

    assert repr(timeout) in str(info.value)


def test_cancel_on_interruption_must_be_a_bool():
    with raises_naming("Flag.t"):

        class Flag:
            @tool(cancel_on_interruption="no")
            async def t(self, params): ...


def test_collect_tools_checks_markers_the_decorator_never_saw():
    def logged(fn):
        @functools.wraps(fn)  # copies the tool mark onto a sync wrapper
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    class Wrapped:
        @logged
        @tool
        async def greet(self, params): ...

    with raises_naming("Wrapped.greet") as info:
        collect_tools(Wrapped)
    assert "async def" in str(info.value)


def test_static_tool_is_refused():
    class Static:
        @staticmethod
        @tool
        async def greet(self, params): ...

    with raises_naming("Static.greet") as info:
        collect_tools(Static)
    assert "staticmethod" in str(info.value)


def test_two_attributes_with_one_tool_name_are_refused():
    class Aliased:
        @tool
        async def greet(self, params): ...

        hello = greet

    with raises_naming("Aliased.hello") as info:
        collect_tools(Aliased)
    assert "'greet'" in str(info.value)


def test_function_schema_needs_params():
    async def loose(x: int): ...

    with pytest.raises(ConfigurationError, match="loose"):
        function_schema(loose)


# Collection over the MRO ---------------------------------------------------------------------


class Base:
    @tool
    async def greet(self, params):
        """Say hello."""

    @tool
    async def transfer(self, params, agent: str): ...

    @tool
    async def farewell(self, params): ...

    async def helper(self, params): ...


class Child(Base):
    async def greet(self, params):  # overridden without @tool: no longer a tool
        ...

    @tool(timeout_secs=3)
    async def transfer(self, params, agent: str, urgent: bool = False):
        """Transfer, maybe urgently."""


def test_collection_walks_the_mro():
    assert set(collect_tools(Base)) == {"greet", "transfer", "farewell"}


def test_override_without_decorator_removes_the_tool():
    assert "greet" not in collect_tools(Child)


def test_redecorated_override_is_kept_with_its_own_schema_and_options():
    tools = collect_tools(Child)
    assert list(tools) == ["transfer", "farewell"]
    spec = tools["transfer"]
    assert spec.options == ToolOptions(timeout_secs=3)
    assert spec.schema.properties == {"agent": STRING, "urgent": {"type": "boolean"}}
    assert spec.schema.description == "Transfer, maybe urgently."
    assert tools["farewell"].options == ToolOptions()


def test_undecorated_methods_are_not_tools():
    assert "helper" not in collect_tools(Base)


# What an LLMWorker does with the specs ---------------------------------------------------------


def test_tools_schema_lists_every_spec_in_order():
    schema = tools_schema(collect_tools(Base).values())
    assert isinstance(schema, ToolsSchema)
    assert [s.name for s in schema.standard_tools] == ["greet", "transfer", "farewell"]


async def test_handler_calls_the_bound_method_with_the_arguments():
    calls = []

    class Worker:
        @tool
        async def transfer(self, params, agent: str, reason: str = "none"):
            calls.append((self, params, agent, reason))

    worker = Worker()
    spec: ToolSpec = collect_tools(Worker)["transfer"]
    params = SimpleNamespace(arguments={"agent": "support", "reason": "billing"})
    await spec.handler(worker)(params)
    assert calls == [(worker, params, "support", "billing")]


def test_timeout_is_accepted_as_the_old_name_of_timeout_secs() -> None:
    class Worker:
        @tool(timeout=7)
        async def slow(self, params: Any) -> None:
            """Slow."""

    assert collect_tools(Worker)["slow"].options.timeout_secs == 7
    with pytest.raises(ConfigurationError, match="not both"):
        tool(timeout=1, timeout_secs=2)
