"""Numbers as JSON types them, for request models: the OpenAPI document says so.

Pydantic's lax mode reads ``true`` as 1 and ``"5"`` as 5, where the document promises an
integer or a number; those are refused here. A float with no fraction is still an integer,
as JSON Schema also counts it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def _number(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise PydanticCustomError("number_type", "must be a JSON number")
    return value


# Last in an ``Annotated``: constraints before it stay in the JSON schema as minimum, maximum.
JSON_NUMBER = BeforeValidator(_number)
JsonInt = Annotated[int, JSON_NUMBER]
JsonFloat = Annotated[float, JSON_NUMBER]
