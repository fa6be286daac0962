"""The `json` plugin on the real embedded model (SmolLM2-135M): the request's schema reaches the
engine as a grammar, so 20 concurrent requests with a nested schema (objects in an array in an
object, enums, required fields, integers), decoded together in the engine's batches, all come
back valid without a repair."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from tests.conftest import MODEL, asgi_client, trace_steps, user

pytestmark = pytest.mark.integration

ORDER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "integer"},
        "status": {"enum": ["open", "paid", "shipped"]},
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"enum": ["A1", "B2", "C3"]},
                    "quantity": {"type": "integer"},
                    "options": {
                        "type": "object",
                        "properties": {"gift": {"type": "boolean"}},
                        "required": ["gift"],
                        "additionalProperties": False,
                    },
                },
                "required": ["sku", "quantity", "options"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["customer", "status", "lines"],
    "additionalProperties": False,
}
REQUESTS = 20


async def test_twenty_concurrent_requests_with_a_nested_schema_all_validate(
    embedded: EmbeddedBackend,
) -> None:
    assert embedded.capabilities.json_schema
    app = create_app(Settings(), backend=embedded)
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}

    async with asgi_client(app) as client:

        async def ask(i: int) -> Any:
            return await client.post(
                "/v1/chat/completions",
                json={
                    "model": f"json-{MODEL}",
                    "messages": [user(f"Write order number {i} for a customer as JSON.")],
                    "response_format": fmt,
                    "max_tokens": 160,
                    "seed": i,
                    "temperature": 0.8,
                    "ponder": {"trace": True},
                },
                timeout=300,
            )

        responses = await asyncio.gather(*(ask(i) for i in range(REQUESTS)))

    validator = Draft202012Validator(ORDER)
    for response in responses:
        assert response.status_code == 200, response.text
        body = response.json()
        document = json.loads(body["choices"][0]["message"]["content"])
        assert list(validator.iter_errors(document)) == []
        (step,) = trace_steps(body, "json")
        assert step["constrained"] is True
        assert step["repairs"] == [0]  # the grammar made it valid the first time
        assert response.headers["x-ponder-backend-calls"] == "1"
