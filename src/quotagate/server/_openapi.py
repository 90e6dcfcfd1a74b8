"""The OpenAPI 3.1 description of every route, served at GET /openapi.json.

Request bodies come from the objects that check them: the OpenAI and Anthropic bodies' field tables
(``_validation.py``) and the admin API's pydantic models (``_admin.py``), so the description cannot
say something the checks do not do. Response bodies are described here; the schemathesis test
(tests/server/test_openapi.py) checks every answer the gateway gives against them.

The OpenAI routes are also served without the ``/v1`` prefix; the description lists each once.
"""

from __future__ import annotations

from typing import Any, get_args

import orjson
from pydantic import BaseModel

from .._version import __version__
from ..accounting._ledger_views import SERIES_BY
from ..accounting._reports import GroupBy
from ..keys import ROLES
from ..keys._store import LABEL_PATTERN
from ..limits import Unit
from ._admin import AdminKeyCreate, KeyCreate, KeyUpdate
from ._validation import (
    CHAT_BODY,
    COMPLETION_BODY,
    COUNT_TOKENS_BODY,
    EMBEDDING_BODY,
    MESSAGES_BODY,
    RequestBody,
)

_SCHEMAS = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _SCHEMAS + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}
_NUMBER = {"type": "number"}
_BOOLEAN = {"type": "boolean"}
_ANY_OBJECT = {"type": "object"}

_ERROR = _object(
    {
        "error": _object(
            {"message": _STRING, "type": _STRING},
            {"param": _nullable(_STRING), "code": _nullable(_STRING)},
        )
    }
)

_KEY = _object(
    {
        "object": {"const": "key"},
        "id": _STRING,
        "key_hint": _STRING,
        "name": _nullable(_STRING),
        "user": _STRING,
        "team": _nullable(_STRING),
        "tier": _STRING,
        "models": _nullable({"type": "array", "items": _STRING}),
        "limits": _nullable(_ANY_OBJECT),
        "expires_at": _nullable({"type": "string", "format": "date-time"}),
        "disabled": _BOOLEAN,
        "created_at": {"type": "string", "format": "date-time"},
    }
)

_QUOTA_LIMIT = _object(
    {
        "name": _STRING,
        "scope": _STRING,
        "unit": {"enum": [unit.value for unit in Unit]},
        "algorithm": _STRING,
        "limit": _INTEGER,
        "used": _INTEGER,
        "remaining": _INTEGER,
        "reset_in_seconds": _NUMBER,
        "resets_at": {"type": "string", "format": "date-time"},
    },
    {"limit_usd": _NUMBER, "used_usd": _NUMBER, "remaining_usd": _NUMBER},
)

_MODEL = _object({"id": _STRING, "object": {"const": "model"}, "created": _INTEGER, "owned_by": _STRING})


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return _object({"object": {"const": "list"}, "data": {"type": "array", "items": item}})


_USER = _object({"object": _STRING, "user": _STRING, "keys": _INTEGER, "teams": {"type": "array", "items": _STRING}})
_ADMIN_KEY = _object(
    {
        "object": {"const": "admin_key"},
        "id": _STRING,
        "key_hint": _STRING,
        "name": _STRING,
        "role": {"enum": list(ROLES)},
        "team": _nullable(_STRING),
        "created_at": {"type": "string", "format": "date-time"},
    }
)


_COMPONENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _ERROR,
    "AnthropicError": _object({"type": {"const": "error"}, "error": _object({"type": _STRING, "message": _STRING})}),
    "Key": _KEY,
    "KeyCreated": {"allOf": [_ref("Key"), _object({"key": {"type": "string", "description": "shown only once"}})]},
    "KeyList": _list_of(_ref("Key")),
    "KeyDeleted": _object({"id": _STRING, "object": {"const": "key"}, "deleted": {"const": True}}),
    "Quota": _object(
        {
            "object": {"const": "quota"},
            "key_id": _nullable(_STRING),
            "user": _nullable(_STRING),
            "tier": _nullable(_STRING),
            "model": _nullable(_STRING),
            "limits": {"type": "array", "items": _QUOTA_LIMIT},
            "team": _nullable(_STRING),
        }
    ),
    "Model": _MODEL,
    "ModelList": _list_of(_ref("Model")),
    "TierList": _object({"object": {"const": "list"}, "data": {"type": "object", "additionalProperties": _ANY_OBJECT}}),
    "TeamList": _object({"object": {"const": "list"}, "data": {"type": "object", "additionalProperties": _ANY_OBJECT}}),
    "DeploymentList": _list_of(
        _object(
            {
                "id": _STRING,
                "model": _STRING,
                "label": _STRING,
                "provider": _STRING,
                "breaker": {"enum": ["closed", "open", "half-open"]},
            },
            {
                "cooldown_seconds_left": _NUMBER,
                "cooldown_reason": _nullable(_STRING),
                "error_rate": _NUMBER,
                "latency_ms": _nullable(_NUMBER),
                "latency_percentiles": _nullable(_object({"p50": _NUMBER, "p95": _NUMBER, "p99": _NUMBER})),
                "limits": {
                    "type": "object",
                    "additionalProperties": _object({"limit": _INTEGER, "capacity": _INTEGER, "remaining": _INTEGER}),
                },
            },
        )
    ),
    "UsageReport": _object(
        {
            "object": {"const": "usage_report"},
            "by": {"enum": list(get_args(GroupBy))},
            "currency": _STRING,
            "rate": _NUMBER,
            "data": {"type": "array", "items": _ANY_OBJECT},
            "totals": _ANY_OBJECT,
        }
    ),
    "Reload": _object(
        {
            "object": {"const": "reload"},
            "file": _STRING,
            "applied": _STRING,
            "changes": {"type": "array", "items": _STRING},
            "ignored_until_restart": {"type": "array", "items": _STRING},
        }
    ),
    # Beside these, the store's own figures (entries, bytes ...).
    "CacheStats": _object(
        {"object": {"const": "cache"}, "store": {"enum": ["memory", "redis"]}, "node": _ANY_OBJECT},
        {"semantic_entries": _INTEGER},
    ),
    "CachePurge": _object(
        {
            "object": {"const": "cache_purge"},
            "namespace": _nullable(_STRING),
            "purged": {"type": "integer", "minimum": 0},
        }
    ),
    "Admin": _object(
        {
            "object": {"const": "admin"},
            "id": _STRING,
            "name": _STRING,
            "role": {"enum": list(ROLES)},
            "team": _nullable(_STRING),
        }
    ),
    "TeamQuota": _object(
        {"object": {"const": "team_quota"}, "team": _STRING, "limits": {"type": "array", "items": _QUOTA_LIMIT}}
    ),
    "UserList": _list_of(_USER),
    "UserQuota": {
        "allOf": [
            _USER,
            _object({"object": {"const": "user_quota"}, "limits": {"type": "array", "items": _QUOTA_LIMIT}}),
        ]
    },
    "AuditLog": _object(
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": _object(
                    {
                        "id": _INTEGER,
                        "ts": {"type": "string", "format": "date-time"},
                        "actor": _STRING,
                        "actor_name": _nullable(_STRING),
                        "action": _STRING,
                        "target": _nullable(_STRING),
                        "details": _nullable(_ANY_OBJECT),
                    }
                ),
            },
            "has_more": _BOOLEAN,
        }
    ),
    "AdminKey": _ADMIN_KEY,
    "AdminKeyCreated": {
        "allOf": [_ref("AdminKey"), _object({"key": {"type": "string", "description": "shown only once"}})]
    },
    "AdminKeyList": _list_of(_ref("AdminKey")),
    "AdminKeyDeleted": _object({"id": _STRING, "object": {"const": "admin_key"}, "deleted": {"const": True}}),
    "LedgerPage": _object(
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": _object(
                    {
                        "request_id": _STRING,
                        "ts": {"type": "string", "format": "date-time"},
                        "key_id": _nullable(_STRING),
                        "user": _nullable(_STRING),
                        "team": _nullable(_STRING),
                        "model_requested": _nullable(_STRING),
                        "model_served": _nullable(_STRING),
                        "deployment": _nullable(_STRING),
                        "prompt_tokens": _INTEGER,
                        "completion_tokens": _INTEGER,
                        "cost_usd": _NUMBER,
                        "latency_ms": _nullable(_NUMBER),
                        "status": _INTEGER,
                        "error_type": _nullable(_STRING),
                    }
                ),
            },
            "next_cursor": _nullable(_STRING),
        }
    ),
    "UsageSeries": _object(
        {
            "object": {"const": "usage_series"},
            "window": {"enum": ["hour", "day", "month"]},
            "by": _nullable(_STRING),
            "buckets": {"type": "array", "items": {"type": "string", "format": "date-time"}},
            "series": {
                "type": "array",
                "items": _object(
                    {
                        "group": _STRING,
                        "requests": {"type": "array", "items": _INTEGER},
                        "tokens": {"type": "array", "items": _INTEGER},
                        "cost_usd": {"type": "array", "items": _NUMBER},
                        "errors": {"type": "array", "items": _INTEGER},
                    }
                ),
            },
            "totals": _object(
                {
                    "requests": _INTEGER,
                    "tokens": _INTEGER,
                    "cost_usd": _NUMBER,
                    "errors": _INTEGER,
                    "cache_hits": _INTEGER,
                    "hit_rate": _NUMBER,
                    "saved_usd": _NUMBER,
                }
            ),
        }
    ),
    "Health": _object({"status": {"const": "ok"}}),
    "Ready": _object(
        {"status": {"enum": ["ready", "not ready"]}, "checks": {"type": "object", "additionalProperties": _STRING}}
    ),
}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": "#/components/responses/Error"} for status in statuses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_TENANT: list[dict[str, list[str]]] = [{"gatewayKey": []}, {"gatewayKeyHeader": []}]
_ADMIN: list[dict[str, list[str]]] = [{"masterKey": []}, {"consoleSession": []}]
# What any request of a tenant may answer besides its success: a bad request, a bad key, a model
# the key may not use or that does not exist, a slow or oversized body, a limit, and what the
# providers answered (502, 503, 504, and 529 where one was overloaded) when no deployment could serve it.
_TENANT_ERRORS = (400, 401, 403, 404, 408, 413, 429, 502, 503, 504, 529)
_ADMIN_ERRORS = (400, 401, 403, 404, 405, 408, 413, 503)


def _anthropic_errors() -> dict[str, Any]:
    """Anthropic's routes answer the same statuses in Anthropic's error shape."""
    return {str(status): {"$ref": "#/components/responses/AnthropicError"} for status in _TENANT_ERRORS}


def _messages_operations() -> dict[str, Any]:
    events = {"text/event-stream": {"schema": _object({"data": _STRING}, {"event": _STRING})}}
    return {
        "/v1/messages": {
            "post": {
                "operationId": "createMessage",
                "summary": "an Anthropic Messages API message (x-api-key or a bearer key)",
                "security": _TENANT,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(MESSAGES_BODY.title)}},
                },
                "responses": {
                    "200": {
                        "description": "the message, in Anthropic's form (events when stream is true)",
                        "content": {"application/json": {"schema": _ANY_OBJECT}, **events},
                    },
                    **_anthropic_errors(),
                },
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "operationId": "countMessageTokens",
                "summary": "the prompt's tokens as the gateway estimates them (not charged)",
                "security": _TENANT,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(COUNT_TOKENS_BODY.title)}},
                },
                "responses": {
                    "200": _json(_object({"input_tokens": {"type": "integer", "minimum": 0}}), "the count"),
                    **_anthropic_errors(),
                },
            }
        },
    }


def _proxy_operation(operation_id: str, body: RequestBody, summary: str) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ANY_OBJECT}}
    if body.streams:
        # Each event: the provider's JSON chunks in ``data``, then ``data: [DONE]``.
        content["text/event-stream"] = {"schema": _object({"data": _STRING}, {"event": _STRING})}
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "security": _TENANT,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body.title)}}},
            "responses": {
                "200": {
                    "description": "the provider's answer, relayed (events when stream is true)",
                    "content": content,
                },
                **_error_responses(*_TENANT_ERRORS),
            },
        }
    }


def _operation(
    operation_id: str, summary: str, schema: str, security: list[Any], errors: tuple[int, ...], **extra: Any
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": security,
        "responses": {"200": _json(_ref(schema), summary), **_error_responses(*errors)},
        **extra,
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _STRING}


_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": _STRING}


def _paths() -> dict[str, Any]:
    key_link = {"parameters": {"key_id": "$response.body#/id"}}
    return {
        "/v1/chat/completions": _proxy_operation("createChatCompletion", CHAT_BODY, "a chat completion"),
        "/v1/completions": _proxy_operation("createCompletion", COMPLETION_BODY, "a text completion"),
        "/v1/embeddings": _proxy_operation("createEmbedding", EMBEDDING_BODY, "embeddings"),
        **_messages_operations(),
        "/v1/models": {
            "get": _operation("listModels", "the models this key may use", "ModelList", _TENANT, (401, 503))
        },
        "/v1/models/{model}": {
            "get": _operation(
                "retrieveModel",
                "one model",
                "Model",
                _TENANT,
                (401, 403, 404, 503),
                parameters=[{"name": "model", "in": "path", "required": True, "schema": _STRING}],
            )
        },
        "/v1/quota": {
            "get": _operation(
                "getQuota",
                "this key's limits: used, remaining, reset",
                "Quota",
                _TENANT,
                (400, 401, 403, 404, 503),
                parameters=[_query("model", "the limits that apply to requests for this model")],
            )
        },
        "/health": {"get": _operation("health", "the process is up", "Health", [], ())},
        "/ready": {
            "get": {
                **_operation("ready", "the database and Redis answer", "Ready", [], ()),
                "responses": {
                    "200": _json(_ref("Ready"), "ready"),
                    "503": _json(_ref("Ready"), "a store does not answer"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (when metrics.enabled; a bearer token when metrics.token is set)",
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": _STRING}}},
                    **_error_responses(401, 404),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this description",
                "security": [],
                "responses": {"200": _json(_ANY_OBJECT, "OpenAPI 3.1")},
            }
        },
        "/admin/keys": {
            "get": _operation(
                "listKeys",
                "keys (never the keys themselves)",
                "KeyList",
                _ADMIN,
                _ADMIN_ERRORS,
                parameters=[
                    _query("user", "only this user's keys", {"type": "string", "pattern": LABEL_PATTERN}),
                    _query("team", "only this team's keys", {"type": "string", "pattern": LABEL_PATTERN}),
                ],
            ),
            "post": {
                "operationId": "createKey",
                "summary": "a new key; the response holds the key, the only time it is shown",
                "security": _ADMIN,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("KeyCreate")}}},
                "responses": {
                    "201": {
                        **_json(_ref("KeyCreated"), "created"),
                        "links": {
                            "GetKey": {"operationId": "getKey", **key_link},
                            "UpdateKey": {"operationId": "updateKey", **key_link},
                            "GetKeyQuota": {"operationId": "getKeyQuota", **key_link},
                            "DisableKey": {"operationId": "disableKey", **key_link},
                            "RotateKey": {"operationId": "rotateKey", **key_link},
                            "DeleteKey": {"operationId": "deleteKey", **key_link},
                        },
                    },
                    **_error_responses(*_ADMIN_ERRORS),
                },
            },
        },
        "/admin/keys/{key_id}": {
            "parameters": [_KEY_ID],
            "get": _operation("getKey", "one key", "Key", _ADMIN, _ADMIN_ERRORS),
            "patch": {
                "operationId": "updateKey",
                "summary": "change a key; limits merge ({'tpm': null} removes one, 'limits': null all)",
                "security": _ADMIN,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("KeyUpdate")}}},
                "responses": {"200": _json(_ref("Key"), "changed"), **_error_responses(*_ADMIN_ERRORS)},
            },
            "delete": {
                "operationId": "deleteKey",
                "summary": "delete a key",
                "security": _ADMIN,
                "responses": {"200": _json(_ref("KeyDeleted"), "deleted"), **_error_responses(*_ADMIN_ERRORS)},
            },
        },
        "/admin/keys/{key_id}/disable": {
            "parameters": [_KEY_ID],
            "post": {**_operation("disableKey", "disable a key", "Key", _ADMIN, _ADMIN_ERRORS)},
        },
        "/admin/keys/{key_id}/enable": {
            "parameters": [_KEY_ID],
            "post": {**_operation("enableKey", "enable a key", "Key", _ADMIN, _ADMIN_ERRORS)},
        },
        "/admin/keys/{key_id}/rotate": {
            "parameters": [_KEY_ID],
            "post": _operation(
                "rotateKey",
                "a new secret for the key, shown once; its id, settings and usage stay",
                "KeyCreated",
                _ADMIN,
                _ADMIN_ERRORS,
            ),
        },
        "/admin/keys/{key_id}/quota": {
            "parameters": [_KEY_ID],
            "get": _operation(
                "getKeyQuota",
                "a key's limits: used, remaining, reset",
                "Quota",
                _ADMIN,
                _ADMIN_ERRORS,
                parameters=[_query("model", "the limits that apply to requests for this model")],
            ),
        },
        "/admin/tiers": {
            "get": _operation("listTiers", "the configured tiers and their limits", "TierList", _ADMIN, _ADMIN_ERRORS)
        },
        "/admin/teams": {
            "get": _operation("listTeams", "the configured teams and their limits", "TeamList", _ADMIN, _ADMIN_ERRORS)
        },
        "/admin/teams/{team}/quota": {
            "parameters": [{"name": "team", "in": "path", "required": True, "schema": _STRING}],
            "get": _operation(
                "getTeamQuota", "a team's shared limits: used, remaining, reset", "TeamQuota", _ADMIN, _ADMIN_ERRORS
            ),
        },
        "/admin/users": {
            "get": _operation("listUsers", "the users that keys belong to", "UserList", _ADMIN, _ADMIN_ERRORS)
        },
        "/admin/users/{user}/quota": {
            "parameters": [{"name": "user", "in": "path", "required": True, "schema": _STRING}],
            "get": _operation(
                "getUserQuota", "a user's own limits: used, remaining, reset", "UserQuota", _ADMIN, _ADMIN_ERRORS
            ),
        },
        "/admin/whoami": {
            "get": _operation("whoami", "the caller: role, name and team", "Admin", _ADMIN, _ADMIN_ERRORS)
        },
        "/admin/audit": {
            "get": _operation(
                "auditLog",
                "what was changed, by whom, newest first",
                "AuditLog",
                _ADMIN,
                _ADMIN_ERRORS,
                parameters=[
                    _query("limit", "entries per page (1-500, 50 by default)", {"type": "integer"}),
                    _query("before", "entries older than this entry id", {"type": "integer"}),
                ],
            )
        },
        "/admin/admin-keys": {
            "get": _operation("listAdminKeys", "admin keys (admins only)", "AdminKeyList", _ADMIN, _ADMIN_ERRORS),
            "post": {
                "operationId": "createAdminKey",
                "summary": "a new admin key; the response holds the key, the only time it is shown",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("AdminKeyCreate")}},
                },
                "responses": {
                    "201": {
                        **_json(_ref("AdminKeyCreated"), "created"),
                        "links": {
                            "DeleteAdminKey": {
                                "operationId": "deleteAdminKey",
                                "parameters": {"admin_key_id": "$response.body#/id"},
                            }
                        },
                    },
                    **_error_responses(*_ADMIN_ERRORS),
                },
            },
        },
        "/admin/admin-keys/{admin_key_id}": {
            "parameters": [{"name": "admin_key_id", "in": "path", "required": True, "schema": _STRING}],
            "delete": _operation("deleteAdminKey", "delete an admin key", "AdminKeyDeleted", _ADMIN, _ADMIN_ERRORS),
        },
        "/admin/usage": {
            "get": _operation(
                "usage",
                "requests, tokens and cost from the ledger, grouped",
                "UsageReport",
                _ADMIN,
                _ADMIN_ERRORS,
                parameters=[
                    _query("by", "the grouping", {"enum": list(get_args(GroupBy))}),
                    _query("since", "a date (YYYY-MM-DD) or an ISO 8601 time"),
                    _query("until", "a date (YYYY-MM-DD) or an ISO 8601 time"),
                ],
            )
        },
        "/admin/usage/series": {
            "get": _operation(
                "usageSeries",
                "requests, tokens, cost and errors over time, in buckets, by a group (the console's overview)",
                "UsageSeries",
                _ADMIN,
                _ADMIN_ERRORS,
                parameters=[
                    _query(
                        "window",
                        "the last hour (1-minute buckets), day (hours) or month (30 days)",
                        {"enum": ["hour", "day", "month"]},
                    ),
                    _query("by", "the grouping (top 8 and (other))", {"enum": list(SERIES_BY)}),
                ],
            )
        },
        "/admin/ledger": {
            "get": {
                **_operation(
                    "ledger",
                    "the request log, newest first, filtered and paged (format=csv: every matching row as CSV)",
                    "LedgerPage",
                    _ADMIN,
                    _ADMIN_ERRORS,
                    parameters=[
                        _query("since", "a date (YYYY-MM-DD) or an ISO 8601 time"),
                        _query("until", "a date (YYYY-MM-DD) or an ISO 8601 time"),
                        *(_query(name, f"only this {name}'s rows") for name in ("key", "user", "team", "model")),
                        *(_query(name, f"only this {name}'s rows") for name in ("deployment", "tier")),
                        _query("status", "ok (below 400), error (400 and above) or a status code"),
                        _query("limit", "rows per page (1-500, 50 by default)", {"type": "integer"}),
                        _query("cursor", "the next_cursor of the page before"),
                        _query("format", "csv: all matching rows as a CSV download", {"enum": ["json", "csv"]}),
                    ],
                ),
                "responses": {
                    "200": {
                        "description": "a page of the log, or with format=csv the whole of it",
                        "content": {
                            "application/json": {"schema": _ref("LedgerPage")},
                            "text/csv": {"schema": _STRING},
                        },
                    },
                    **_error_responses(*_ADMIN_ERRORS),
                },
            }
        },
        "/admin/deployments": {
            "get": _operation(
                "listDeployments", "every deployment's health and headroom", "DeploymentList", _ADMIN, _ADMIN_ERRORS
            )
        },
        "/admin/cache": {
            "get": _operation(
                "cacheStats",
                "the response cache's figures: its store's, and this node's lookups",
                "CacheStats",
                _ADMIN,
                _ADMIN_ERRORS,
            ),
            "delete": _operation(
                "purgeCache",
                "drop the response cache's answers, all or one namespace's (on every node)",
                "CachePurge",
                _ADMIN,
                _ADMIN_ERRORS,
                parameters=[_query("namespace", "only this namespace's: key:ID, user:NAME, tier:NAME or global")],
            ),
        },
        "/admin/reload": {
            "post": _operation(
                "reload", "serve the configuration file as it is now (as SIGHUP does)", "Reload", _ADMIN, _ADMIN_ERRORS
            )
        },
    }


def _model_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_SCHEMAS + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def openapi_document() -> dict[str, Any]:
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quotagate",
            "version": __version__,
            "description": "An OpenAI-compatible gateway with exact rate limits, quotas and spend control. "
            "The /v1 routes (but Anthropic's /v1/messages) are also served without the /v1 prefix. "
            "Errors are OpenAI-shaped, and Anthropic-shaped on /v1/messages.",
        },
        "paths": _paths(),
        "components": {
            "schemas": {
                **{
                    body.title: body.json_schema()
                    for body in (CHAT_BODY, COMPLETION_BODY, EMBEDDING_BODY, MESSAGES_BODY, COUNT_TOKENS_BODY)
                },
                **_model_schemas(KeyCreate, KeyUpdate, AdminKeyCreate),
                **_COMPONENT_SCHEMAS,
            },
            "responses": {
                "Error": _json(_ref("Error"), "an error, OpenAI-shaped"),
                "AnthropicError": _json(_ref("AnthropicError"), "an error, Anthropic-shaped"),
            },
            "securitySchemes": {
                "gatewayKey": {**bearer, "description": "a gateway key (Authorization: Bearer KEY)"},
                "gatewayKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "masterKey": {
                    **bearer,
                    "description": "the configured master_key, or an admin key (its role limits what it may do)",
                },
                "consoleSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "qg_session",
                    "description": "the console's session (POST /ui/login); writes also need X-CSRF-Token",
                },
                "metricsToken": {**bearer, "description": "metrics.token"},
            },
        },
    }


def openapi_json() -> bytes:
    return orjson.dumps(openapi_document())
