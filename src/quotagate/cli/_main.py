"""The ``quotagate`` command."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import shlex
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import orjson
import typer

from ..config import Config, ConfigError, LimitValues, default_config, load_config, missing_secrets

if TYPE_CHECKING:
    from rich.table import Table

    from ..keys import KeyStore
    from ..tiering import RoutePlan

app = typer.Typer(
    name="quotagate",
    help="An OpenAI-compatible AI API gateway: gateway keys, tiers, limits and a mock upstream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list, disable, enable, rotate and delete gateway keys.", no_args_is_help=True)
admin_keys_app = typer.Typer(
    help="Admin keys for the admin API and the console: viewer, team_admin or admin.", no_args_is_help=True
)
config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
cache_app = typer.Typer(
    help="A running gateway's response cache, through its admin API: its figures, and purging it.",
    no_args_is_help=True,
)
route_app = typer.Typer(help="Model tiering: how a routed model classifies requests.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(admin_keys_app, name="admin-keys")
app.add_typer(config_app, name="config")
app.add_typer(cache_app, name="cache")
app.add_typer(route_app, name="route")


class _LazyConsole:
    """A rich Console made on first use: ``quotagate serve`` with a configuration prints nothing
    through it, and importing rich is ~5 % of the gateway's start-up."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


out = _LazyConsole(highlight=False, soft_wrap=True)
err = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)


def _print_table(table: Table) -> None:
    from rich.console import Console
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(table)
        return
    # Piped output has no terminal width to honour; keep rows whole for grep and friends, however
    # many columns (a usage report in a display currency has up to 16).
    console = Console(highlight=False, width=200)
    widest = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(highlight=False, width=max(200, widest)).print(table)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML configuration file. Default: $QUOTAGATE_CONFIG, else the embedded default "
        "(SQLite at ./quotagate.db, tiers free/paid/enterprise).",
        show_default=False,
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.text import Text

    # The message is printed as text: field paths like models[gpt-4o] are not rich markup.
    err.print(Text("error: ", style="red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


def _config_path(path: Path | None) -> Path | None:
    """The configuration file chosen: --config, else $QUOTAGATE_CONFIG, else none."""
    return path or (Path(os.environ["QUOTAGATE_CONFIG"]) if os.environ.get("QUOTAGATE_CONFIG") else None)


def _config(path: Path | None) -> Config | None:
    """The chosen configuration, or None for the embedded default."""
    chosen = _config_path(path)
    if chosen is None:
        return None
    try:
        return load_config(chosen)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


# -- serve ------------------------------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default: from config, else 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: from config, else 4000).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Gateway processes sharing the port, to use more cores; above 1 needs `redis:` in the "
            "config (default: from config, else 1).",
        ),
    ] = None,
) -> None:
    """Run the gateway.

    With no configuration it runs on the embedded defaults: SQLite, the in-process limit store,
    and a demo model served by a mock upstream it starts itself (or by OpenAI when
    OPENAI_API_KEY is set). It then prints a demo key and a curl line.

    SIGHUP (or POST /admin/reload with the master key) reloads the configuration file: tiers,
    limits, models, deployments, pricing, router, alerts and logging, without dropping requests
    in flight, and limits whose definition did not change keep their counts. A file that fails
    its checks is logged and the running configuration goes on serving. server.host, port and
    workers, database, redis, ledger, metrics_per_key and the limiter's on_store_failure,
    fallback_share, timeout_ms and max_queue take effect only at restart. With --workers, the
    workers are replaced one by one.
    """
    # The modules imported from here are long-lived objects: the ~200 collections that ran while
    # they loaded freed under 2,000 objects and cost ~3 % of start-up. The gateway collects once,
    # then freezes what is alive, when it starts serving (server._run.tune_gc_for_serving, which
    # turns collection back on).
    gc.disable()
    from ..server._run import ListenError, run, serve_demo, serve_workers
    from ..server._run import serve as run_gateway

    loaded = _config(config)
    try:
        processes = workers or (loaded.server.workers if loaded is not None else 1)
        if processes > 1:
            chosen = _config_path(config)
            if loaded is None or chosen is None:
                raise ConfigError(
                    "--workers needs a configuration file with `redis:` (the embedded default keeps "
                    "limits in the process)."
                )
            serve_workers(loaded, chosen, processes, host, port)
        elif loaded is None:
            run(
                serve_demo(
                    host or "127.0.0.1",
                    port if port is not None else 4000,
                    os.environ.get("QUOTAGATE_MASTER_KEY"),
                    _announce_demo,
                )
            )
        else:
            run(run_gateway(loaded, host, port, _config_path(config)))
    except (ConfigError, ListenError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


def _announce_demo(info: Any) -> None:
    out.print(f"\n[bold green]quotagate is running[/bold green] at {info.url}")
    upstream = f"a mock upstream at {info.mock_url}" if info.mock_url else "OpenAI (OPENAI_API_KEY)"
    out.print(f"model [bold]{info.model}[/bold] is served by {upstream}")
    out.print(f"admin (master) key: {info.master_key}")
    out.print("\nTry it:\n")
    curl = (
        f"curl {info.url}/chat/completions -H 'Authorization: Bearer {info.key}' "
        "-H 'Content-Type: application/json' "
        f'-d \'{{"model": "{info.model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\''
    )
    python = _python_command()
    sdk = (
        f'{python} -c "from openai import OpenAI; '
        f"c = OpenAI(base_url='{info.url}', api_key='{info.key}'); "
        f"r = c.chat.completions.create(model='{info.model}', "
        "messages=[{'role': 'user', 'content': 'Hello!'}]); "
        'print(r.choices[0].message.content)"'
    )
    # markup=False: the JSON's brackets are text, not rich markup.
    out.print(curl, markup=False)
    out.print()
    if importlib.util.find_spec("openai") is None:
        # `pip install -e .` does not bring the OpenAI SDK (it is the `client` extra), and the
        # Python line is among the first things a newcomer pastes.
        out.print(f"{python} -m pip install openai  # the OpenAI SDK, which the next line uses", markup=False)
    out.print(sdk, markup=False)
    out.print("\nPress Ctrl+C to stop.\nDemo key:")
    out.print(info.key, soft_wrap=True)


def _python_command() -> str:
    """This interpreter as a shell command: the printed Python line must run where quotagate is
    installed, and a bare `python` may be another interpreter, or none at all."""
    if not sys.executable:
        return "python3"
    path = Path(sys.executable)
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    text = str(path)
    return shlex.quote(text if "/" in text else "./" + text)


# -- mock-upstream ----------------------------------------------------------------------------


@app.command("mock-upstream")
def mock_upstream(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    latency_ms: Annotated[float, typer.Option(help="Delay before each response, in milliseconds.")] = 0.0,
    completion_tokens: Annotated[
        int, typer.Option(help="Tokens generated per completion (fewer if max_tokens is lower).")
    ] = 16,
    stream_chunk_delay_ms: Annotated[float, typer.Option(help="Delay between stream chunks (slow streams).")] = 0.0,
    rate_429: Annotated[
        float, typer.Option("--rate-429", help="Share of requests answered 429 with Retry-After.")
    ] = 0.0,
    retry_after: Annotated[float, typer.Option(help="Retry-After seconds sent with the 429s.")] = 1.0,
    rate_500: Annotated[float, typer.Option("--rate-500", help="Share of requests answered 500.")] = 0.0,
    rate_hang: Annotated[float, typer.Option(help="Share of requests never answered.")] = 0.0,
    rate_drop: Annotated[float, typer.Option(help="Share of streams cut off midway.")] = 0.0,
    fail_first: Annotated[int, typer.Option(help="Answer the first N requests with 429 (for retry tests).")] = 0,
    rpm: Annotated[
        int | None, typer.Option(help="Enforce this RPM exactly, as a provider would (429 past it).")
    ] = None,
    rate_window: Annotated[float, typer.Option(help="The window of --rpm, in seconds.")] = 60.0,
    storm_seconds: Annotated[float, typer.Option(help="Answer everything 429 for this long after start.")] = 0.0,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require this Bearer key (401 otherwise).", envvar="MOCK_UPSTREAM_API_KEY"),
    ] = None,
    record: Annotated[bool, typer.Option(help="Keep the last 200 requests, served at GET /mock/requests.")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed for the fault draws, for repeatable runs.")] = None,
) -> None:
    """Run a fast OpenAI-compatible mock provider (chat, completions, embeddings, models)."""
    import uvicorn

    from .._uvicorn import uvicorn_config
    from ..mock import MockOptions, MockUpstream

    for name, rate in (
        ("--rate-429", rate_429),
        ("--rate-500", rate_500),
        ("--rate-hang", rate_hang),
        ("--rate-drop", rate_drop),
    ):
        if not 0.0 <= rate <= 1.0:
            raise _fail(f"{name} must be between 0 and 1, got {rate}")
    if rate_429 + rate_500 + rate_hang + rate_drop > 1.0:
        raise _fail("the fault rates add up to more than 1")
    options = MockOptions(
        latency_ms=latency_ms,
        completion_tokens=completion_tokens,
        stream_chunk_delay_ms=stream_chunk_delay_ms,
        rate_429=rate_429,
        retry_after=retry_after,
        rate_500=rate_500,
        rate_hang=rate_hang,
        rate_drop=rate_drop,
        fail_first=fail_first,
        rpm=rpm,
        rate_window=rate_window,
        storm_seconds=storm_seconds,
        api_key=api_key,
        record=record,
        seed=seed,
    )
    err.print(f"mock upstream on http://{host}:{port}/v1")
    config = uvicorn_config(MockUpstream(options), host, port)
    # The injected drops surface as "Exception in ASGI application"; they are intended.
    config.log_level = "critical"
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


# -- config -----------------------------------------------------------------------------------


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The YAML configuration file.")]) -> None:
    """Validate a configuration file, including that every env:NAME secret is set."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    problems = missing_secrets(config)
    if problems:
        raise _fail("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    deployments = sum(len(m.deployments) for m in config.models)
    out.print(
        f"{file}: OK ({len(config.tiers)} tiers, {len(config.models)} models, "
        f"{deployments} deployments, database {config.database.split(':', 1)[0]}, "
        f"store {'redis' if config.redis else 'in-process'})"
    )


# -- keys -------------------------------------------------------------------------------------


def _key_config(path: Path | None) -> Config:
    return _config(path) or default_config(mock_upstream_url="http://127.0.0.1/v1")


def _run(coro: Any) -> Any:
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(coro)
    except OSError as exc:
        raise _fail(f"cannot reach the database: {exc}") from None
    except DBAPIError as exc:
        # e.g. a PostgreSQL database that does not exist: the driver's own sentence is the news.
        raise _fail(f"database: {exc.orig or exc}") from None


def _open_store(config: Config, path: Path | None, *, create: bool = False) -> KeyStore:
    """The configured key store. Only a command that stores something may create the database:
    one that reads, run in the wrong folder, would leave an empty ./quotagate.db behind and
    answer as if the gateway had no keys and no usage."""
    from ..keys import KeyStore

    store = KeyStore.from_url(config.database)
    file = store.database.sqlite_file
    if not create and file is not None and not Path(file).exists():
        chosen = _config_path(path)
        if chosen is None:
            raise _fail(
                f"no database at {Path(file).resolve()} (without a configuration, the gateway keeps its "
                "database in ./quotagate.db of the folder it runs in): run this there, or point at the "
                "gateway's configuration with --config FILE"
            )
        raise _fail(
            f"no database at {Path(file).resolve()} (the `database` of {chosen}): nothing has been stored "
            "there yet; is this the gateway's configuration?"
        )
    return store


async def _with_store(store: KeyStore, action: Any) -> Any:
    try:
        await store.create_schema()
        return await action(store)
    finally:
        await store.close()


async def _audited(store: KeyStore, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
    """The audit log's entry for a change made from the command line: by "cli", as the OS user."""
    import getpass

    from ..keys import AuditLog

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        who = None
    await AuditLog(store.database).record("cli", action, target, details, actor_name=who)


_LIMIT_NAMES = (
    "rpm, rph, rpd, requests_per_month, tpm, tph, tpd, tokens_per_month, itpm, otpm, concurrency, "
    "usd_per_day, usd_per_month"
)
LimitOption = Annotated[
    list[str] | None,
    typer.Option(
        "--limit",
        help=f"Override one of the tier's limits for this key, as NAME=VALUE (repeatable): {_LIMIT_NAMES}.",
        show_default=False,
    ),
]
UpdateLimitOption = Annotated[
    list[str] | None,
    typer.Option(
        "--limit",
        help="Set one of the key's limit overrides, as NAME=VALUE, keeping its others; NAME=none removes "
        f"one, so the tier's applies again (repeatable): {_LIMIT_NAMES}.",
        show_default=False,
    ),
]


def _number(text: str) -> float:
    # An integer where it is one (counts must be), else a float: 1e-300 and inf are numbers too,
    # and the limit's bounds, not the parser, say what is wrong with them.
    try:
        return int(text)
    except ValueError:
        return float(text)


def _check_labels(**labels: str | list[str] | None) -> None:
    """Refuse a user, team, tier, name or model with a control character, naming the option."""
    from ..keys._store import text_problem

    for option, value in labels.items():
        for item in value if isinstance(value, list) else [value]:
            problem = text_problem(item) if item is not None else None
            if problem is not None:
                raise _fail(f"--{option}: {problem}")


def _parse_limits(values: list[str] | None, *, removable: bool = False) -> dict[str, float | None] | None:
    """--limit NAME=VALUE options, checked; with ``removable``, NAME=none is None (remove it)."""
    from pydantic import ValidationError

    from ..policy import check_overrides

    if not values:
        return None
    parsed: dict[str, float | None] = {}
    for item in values:
        name, _, amount = item.partition("=")
        if removable and amount.strip().lower() == "none":
            parsed[name.strip()] = None
            continue
        try:
            parsed[name.strip()] = _number(amount)
        except ValueError:
            example = ", or NAME=none to remove one" if removable else ""
            raise _fail(f"--limit {item!r}: expected NAME=NUMBER, e.g. rpm=100 or usd_per_day=5.50{example}") from None
    try:
        # The names of removals are checked too: a typo must not pass as a no-op. The bounds are
        # the configuration's own (LimitValues), as the admin API's are.
        checked = check_overrides(parsed)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise _fail(f"--limit: {problems}") from None
    return {name: checked.get(name) for name in parsed}


def _parse_time(value: str | None, option: str, timezone: str | None = None) -> datetime | None:
    """The date or time given to ``option``: YYYY-MM-DD (midnight UTC) or ISO 8601; with
    ``timezone``, also ``today`` and ``yesterday``, whose days begin at midnight there (as the
    ledger's days and the calendar quotas do)."""
    if value is None:
        return None
    word = value.strip().lower()
    if timezone is not None and word in ("today", "yesterday"):
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(timezone)
        day = datetime.now(zone).date() - timedelta(days=1 if word == "yesterday" else 0)
        return datetime.combine(day, time(), zone)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        words = ", today or yesterday" if timezone is not None else ""
        raise _fail(f"{option}: {value!r} is not a date (YYYY-MM-DD), an ISO 8601 time{words}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="The user the key belongs to.")],
    tier: Annotated[str, typer.Option(help="The tier whose limits the key gets.")],
    team: Annotated[
        str | None, typer.Option(help="The team the key belongs to (one of the configuration's teams).")
    ] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models the key may use (default: all).")] = None,
    expires: Annotated[
        str | None, typer.Option(help="Expiry, in the future: YYYY-MM-DD (midnight UTC) or an ISO 8601 time.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    limit: LimitOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key. The key is printed once, as the last line; it is stored only hashed."""
    from ..server._admin import check_key_fields, expiry_problem

    cfg = _key_config(config)
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    _check_labels(user=user, team=team, tier=tier, models=model_list, name=name)
    try:
        check_key_fields(cfg, tier, model_list, team)
    except Exception as exc:
        raise _fail(str(exc)) from None
    expires_at = _parse_time(expires, "--expires")
    problem = expiry_problem(expires_at, datetime.now(UTC))
    if problem is not None:
        raise _fail(f"--expires {expires}: {problem}")
    # Without removable=True no value is None.
    overrides = cast("dict[str, float] | None", _parse_limits(limit))

    async def create(store: KeyStore) -> Any:
        made = await store.create(
            user=user, tier=tier, models=model_list, expires_at=expires_at, name=name, limits=overrides, team=team
        )
        await _audited(store, "key.create", made[0].id, {"user": user, "tier": tier, "team": team, "name": name})
        return made

    record, key = _run(_with_store(_open_store(cfg, config, create=True), create))
    out.print(f"created key {record.id} for user {record.user} on tier {record.tier}", soft_wrap=True)
    if record.team is not None:
        out.print(f"team: {record.team}", soft_wrap=True, markup=False)
    if record.models is not None:
        out.print(f"models: {', '.join(record.models)}")
    if record.expires_at is not None:
        out.print(f"expires: {record.expires_at.isoformat()}")
    if record.limits:
        out.print("limits: " + ", ".join(f"{k}={v}" for k, v in record.limits))
    out.print("store it now: it cannot be shown again")
    # Plain print: the last line must be the bare key, unwrapped and unstyled.
    print(key)


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
    json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys (their ids and hints, never the keys)."""
    _check_labels(user=user, team=team)
    records = _run(_with_store(_open_store(_key_config(config), config), lambda s: s.list(user=user, team=team)))
    if json:
        print(orjson.dumps([r.to_public_dict() for r in records], option=orjson.OPT_INDENT_2).decode())
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    # Ids and hints are what users copy; they never wrap or get cut, other columns give way.
    table.add_column("id", no_wrap=True, min_width=20)
    table.add_column("key", no_wrap=True, min_width=14)
    for column in ("user", "team", "tier", "models", "expires", "status", "created"):
        table.add_column(column)
    now = datetime.now(UTC)
    for r in records:
        status = "disabled" if r.disabled else "expired" if r.is_expired(now) else "active"
        table.add_row(
            r.id,
            r.key_hint,
            escape(r.user),
            escape(r.team) if r.team is not None else "-",
            escape(r.tier),
            ", ".join(r.models) if r.models is not None else "all",
            r.expires_at.isoformat(timespec="minutes") if r.expires_at else "never",
            status,
            r.created_at.isoformat(timespec="seconds"),
        )
    _print_table(table)


def _change(key_id: str, config: Path | None, verb: str, **changes: Any) -> None:
    action = {"updated": "key.update", "disabled": "key.disable", "enabled": "key.enable"}[verb]

    async def change(store: KeyStore) -> Any:
        changed = await store.update(key_id, **changes)
        if changed is not None:
            details = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in changes.items()}
            await _audited(store, action, key_id, details if action == "key.update" else None)
        return changed

    record = _run(_with_store(_open_store(_key_config(config), config), change))
    if record is None:
        raise _fail(f"no key with id {key_id!r}")
    out.print(f"{verb} key {key_id} (running gateways notice within their auth cache time)")
    if "team" in changes:
        out.print(f"team: {record.team or 'none'}", soft_wrap=True, markup=False)
    if "limits" in changes:
        overrides = ", ".join(f"{k}={v}" for k, v in record.limits or ())
        out.print(f"limits: {overrides or 'none of its own (the tier applies)'}")


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    tier: Annotated[str | None, typer.Option(help="Move the key to this tier.")] = None,
    team: Annotated[str | None, typer.Option(help="Move the key to this team.")] = None,
    no_team: Annotated[bool, typer.Option("--no-team", help="Take the key out of its team.")] = False,
    models: Annotated[str | None, typer.Option(help="Comma-separated allowed models; 'all' for every model.")] = None,
    expires: Annotated[str | None, typer.Option(help="New expiry (YYYY-MM-DD or ISO 8601); 'never' to clear.")] = None,
    limit: UpdateLimitOption = None,
    clear_limits: Annotated[
        bool,
        typer.Option(
            "--clear-limits",
            help="Drop all the key's overrides, so the tier's limits apply; with --limit, those become its only ones.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Change a key's tier, team, models, expiry or limit overrides (running gateways notice
    within their auth cache time).

    Limits merge into the key's overrides, as the admin API's PATCH
    does: --limit tpm=5000 sets TPM and keeps the others, --limit
    tpm=none removes TPM's, --clear-limits removes them all.
    """
    from ..server._admin import check_key_fields

    cfg = _key_config(config)
    changes: dict[str, Any] = {}
    if tier is not None:
        changes["tier"] = tier
    if team is not None and no_team:
        raise _fail("--team and --no-team contradict each other: give one")
    if team is not None or no_team:
        changes["team"] = team
    if models is not None:
        changes["models"] = None if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    if expires is not None:
        changes["expires_at"] = None if expires == "never" else _parse_time(expires, "--expires")
    patch = _parse_limits(limit, removable=True)
    if clear_limits and patch:
        # One merge patch that removes every override but the ones given: the store applies it
        # in one transaction, so there is no moment with neither the old nor the new ones.
        changes["limits"] = dict.fromkeys(LimitValues.model_fields) | patch
    elif clear_limits:
        changes["limits"] = None
    elif patch:
        changes["limits"] = patch
    if not changes:
        raise _fail("nothing to change: give --tier, --team, --no-team, --models, --expires, --limit or --clear-limits")
    _check_labels(tier=tier, team=team, models=changes.get("models"))
    try:
        check_key_fields(cfg, changes.get("tier"), changes.get("models"), team)
    except Exception as exc:
        raise _fail(str(exc)) from None
    _change(key_id, config, "updated", **changes)


@keys_app.command("disable")
def keys_disable(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")], config: ConfigOption = None
) -> None:
    """Disable a key: requests with it get 401 until it is enabled again."""
    _change(key_id, config, "disabled", disabled=True)


@keys_app.command("enable")
def keys_enable(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")], config: ConfigOption = None
) -> None:
    """Enable a disabled key."""
    _change(key_id, config, "enabled", disabled=False)


@keys_app.command("delete")
def keys_delete(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")], config: ConfigOption = None
) -> None:
    """Delete a key for good."""

    async def delete(store: KeyStore) -> Any:
        deleted = await store.delete(key_id)
        if deleted is not None:
            await _audited(store, "key.delete", key_id, {"user": deleted.user, "team": deleted.team})
        return deleted

    if _run(_with_store(_open_store(_key_config(config), config), delete)) is None:
        raise _fail(f"no key with id {key_id!r}")
    out.print(f"deleted key {key_id}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")], config: ConfigOption = None
) -> None:
    """Give a key a new secret, printed once as the last line. The id, settings and usage so far
    stay; the old secret stops working (on running gateways within their auth cache time)."""

    async def rotate(store: KeyStore) -> Any:
        rotated = await store.rotate(key_id)
        if rotated is not None:
            await _audited(store, "key.rotate", key_id, {"key_hint": rotated[0].key_hint})
        return rotated

    rotated = _run(_with_store(_open_store(_key_config(config), config), rotate))
    if rotated is None:
        raise _fail(f"no key with id {key_id!r}")
    out.print(f"rotated key {key_id}: store the new secret now, it cannot be shown again")
    print(rotated[1])


@admin_keys_app.command("create")
def admin_keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    role: Annotated[
        str, typer.Option(help="viewer (reads only), team_admin (the keys of one team) or admin (everything).")
    ],
    team: Annotated[str | None, typer.Option(help="The team a team_admin manages.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create an admin key for the admin API and the console. It is printed once, as the last line."""
    from ..keys import AdminKeyStore, role_problem
    from ..server._admin import check_key_fields

    cfg = _key_config(config)
    _check_labels(name=name, team=team)
    problem = role_problem(role, team)
    if problem is not None:
        raise _fail(f"--role {role}: {problem}")
    try:
        check_key_fields(cfg, None, None, team)
    except Exception as exc:
        raise _fail(str(exc)) from None

    async def create(store: KeyStore) -> Any:
        made = await AdminKeyStore(store.database).create(name=name, role=role, team=team)  # type: ignore[arg-type]
        await _audited(store, "admin_key.create", made[0].id, {"name": name, "role": role, "team": team})
        return made

    record, key = _run(_with_store(_open_store(cfg, config, create=True), create))
    out.print(f"created admin key {record.id} ({record.role}{' of ' + record.team if record.team else ''})")
    out.print("store it now: it cannot be shown again")
    print(key)


@admin_keys_app.command("list")
def admin_keys_list(
    json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False, config: ConfigOption = None
) -> None:
    """List admin keys (their ids and hints, never the keys)."""
    from ..keys import AdminKeyStore

    records = _run(_with_store(_open_store(_key_config(config), config), lambda s: AdminKeyStore(s.database).list()))
    if json:
        print(orjson.dumps([r.to_public_dict() for r in records], option=orjson.OPT_INDENT_2).decode())
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("id", no_wrap=True, min_width=20)
    table.add_column("key", no_wrap=True, min_width=14)
    for column in ("name", "role", "team", "created"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id, r.key_hint, escape(r.name), r.role, escape(r.team or "-"), r.created_at.isoformat(timespec="seconds")
        )
    _print_table(table)


@admin_keys_app.command("delete")
def admin_keys_delete(
    key_id: Annotated[str, typer.Argument(help="The admin key's id (adm_...).")], config: ConfigOption = None
) -> None:
    """Delete an admin key: it, and the console sessions signed in with it, stop working."""
    from ..keys import AdminKeyStore

    async def delete(store: KeyStore) -> Any:
        deleted = await AdminKeyStore(store.database).delete(key_id)
        if deleted is not None:
            await _audited(store, "admin_key.delete", key_id, {"name": deleted.name, "role": deleted.role})
        return deleted

    if _run(_with_store(_open_store(_key_config(config), config), delete)) is None:
        raise _fail(f"no admin key with id {key_id!r}")
    out.print(f"deleted admin key {key_id}")


@app.command()
def audit(
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many entries, newest first.")] = 50,
    json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the audit log: the changes made through the admin API, the console and this command line."""
    from ..keys import AuditLog

    entries, _ = _run(_with_store(_open_store(_key_config(config), config), lambda s: AuditLog(s.database).page(limit)))
    if json:
        print(orjson.dumps([e.to_public_dict() for e in entries], option=orjson.OPT_INDENT_2).decode())
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("time", "actor", "action", "target", "details"):
        table.add_column(column)
    for e in entries:
        actor = e.actor if e.actor_name is None else f"{e.actor} ({e.actor_name})"
        details = orjson.dumps(e.details).decode() if e.details else ""
        table.add_row(
            e.ts.isoformat(timespec="seconds"), escape(actor), escape(e.action), escape(e.target or ""), escape(details)
        )
    _print_table(table)


@app.command()
def usage(
    by: Annotated[
        str,
        typer.Option(
            help="Group by key, user, team, tier, model, deployment, day or route (the requests model tiering moved: "
            "by routed model and class, and the downgraded ones, with what they would have cost and the saving)."
        ),
    ] = "key",
    since: Annotated[
        str | None,
        typer.Option(
            help="From this date or time (inclusive): YYYY-MM-DD (midnight UTC), an ISO 8601 time, or today or "
            "yesterday (midnight in the configured timezone)."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Until this date or time (exclusive); the same forms as --since.")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    config: ConfigOption = None,
) -> None:
    """Usage and cost from the ledger, grouped, with totals: requests, errors, tokens, cost, and
    the response cache's hits, hit rate and savings (costs and savings also in the display
    currency)."""
    import csv

    from ..accounting import usage_report

    if by not in ("key", "user", "team", "tier", "model", "deployment", "day", "route"):
        raise _fail("--by must be key, user, team, tier, model, deployment, day or route")
    if format not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json")
    cfg = _key_config(config)
    start, end = _parse_time(since, "--since", cfg.timezone), _parse_time(until, "--until", cfg.timezone)
    currency = cfg.currency

    async def build(store: Any) -> Any:
        return await usage_report(store.database, by, start, end, currency.display, currency.rate)  # type: ignore[arg-type]

    report = _run(_with_store(_open_store(cfg, config), build))
    if format == "json":
        document = report.to_dict()
        for row in [*document["data"], document["totals"]]:
            for column, value in row.items():
                if column.startswith(_AMOUNTS):
                    # A raw number: orjson, like repr, writes 1.5e-7 below a millionth.
                    row[column] = orjson.Fragment(_decimal(value))
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    # The totals have every column of the report, in its order (a report of no rows too).
    columns = [by, *report.totals]
    rows = [
        {column: _decimal(value) if column.startswith(_AMOUNTS) else value for column, value in row.items()}
        for row in [*report.rows, {by: "TOTAL", **report.totals}]
    ]
    if format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(escape(str(row.get(c, ""))) for c in columns))
    _print_table(table)


# The report's amounts of money (cost_usd, saved_usd, the route report's baseline_usd and
# routing_saved_usd, and their display currency's): printed as plain decimals.
_AMOUNTS = ("cost_", "saved_", "baseline_", "routing_saved_")


def _decimal(amount: float) -> str:
    """An amount (a cost, a saving) as a plain decimal: requests cost millionths of a dollar, which
    str(), the csv module and JSON encoders write as 5.4e-05. Reports round amounts to 10 places,
    so 10 lose nothing."""
    text = f"{amount:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


# -- cache ------------------------------------------------------------------------------------

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="The gateway's address. Default: http://HOST:PORT of the configuration's server "
        "(127.0.0.1 when it listens on every interface), else http://127.0.0.1:4000.",
        show_default=False,
    ),
]
MasterKeyOption = Annotated[
    str | None,
    typer.Option(
        "--master-key",
        envvar="QUOTAGATE_MASTER_KEY",
        help="The admin API's master key; $QUOTAGATE_MASTER_KEY is safer (other users of the machine can "
        "see command lines). Default: the configuration's master_key (its env:NAME read from the environment).",
        show_default=False,
    ),
]


def _gateway_url(config: Config | None) -> str:
    """Where the configured gateway answers, as seen from this machine."""
    if config is None:
        return "http://127.0.0.1:4000"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.server.host, config.server.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{config.server.port}"


def _admin_call(
    method: str, path: str, config: Path | None, url: str | None, master_key: str | None, **query: str
) -> Any:
    """The admin API's JSON answer to ``method path``, or the command's end with its error message."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from ..config import resolve_secret

    loaded = _config(config)
    if master_key is None and loaded is not None:
        try:
            master_key = resolve_secret(loaded.master_key, "master_key")
        except ConfigError as exc:
            raise _fail(f"{exc} (or give --master-key, or set QUOTAGATE_MASTER_KEY)") from None
    if not master_key:
        raise _fail(
            "no master key: give --master-key, set QUOTAGATE_MASTER_KEY, or point --config at the gateway's "
            "configuration (its master_key)"
        )
    base = (url or _gateway_url(loaded)).rstrip("/")
    address = base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(address, method=method, headers={"Authorization": f"Bearer {master_key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = orjson.loads(body)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = body.decode("utf-8", "replace").strip() or exc.reason
        raise _fail(f"the gateway at {base} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _fail(f"cannot reach the gateway at {base} ({reason}); is it running? (--url)") from None
    except orjson.JSONDecodeError:
        raise _fail(f"the gateway at {base} did not answer JSON: is --url a quotagate gateway?") from None


def _flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested figures as (dotted name, value) pairs, in their order."""
    pairs: list[tuple[str, Any]] = []
    for name, value in figures.items():
        if isinstance(value, dict):
            pairs.extend(_flat(value, f"{prefix}{name}."))
        else:
            pairs.append((f"{prefix}{name}", value))
    return pairs


@cache_app.command("stats")
def cache_stats(
    json: Annotated[bool, typer.Option("--json", help="The admin API's JSON answer, as it came.")] = False,
    url: UrlOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Show the response cache's figures (GET /admin/cache): its store's entries and size, hits and misses.

    With the in-process store (cache.store: memory), each gateway process has a cache of its own,
    and these are the figures of the process that answered.
    """
    stats = _admin_call("GET", "/admin/cache", config, url, master_key)
    if json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("figure", "value")
    for name, value in _flat(stats):
        if name != "object":
            table.add_row(escape(name), escape(str(value)))
    _print_table(table)


@cache_app.command("purge")
def cache_purge(
    namespace: Annotated[
        str | None,
        typer.Option(
            help="Only this namespace's answers: key:ID, user:NAME, tier:NAME or global (the answers "
            "shared by everyone). Default: every answer.",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Drop cached answers (DELETE /admin/cache), so the next requests go to the providers.

    With the in-process store (cache.store: memory), each gateway process has a cache of its own,
    and only the cache of the process that answered is purged; with cache.store: redis, the one
    every node shares.
    """
    query = {"namespace": namespace} if namespace is not None else {}
    answer = _admin_call("DELETE", "/admin/cache", config, url, master_key, **query)
    purged = answer.get("purged", 0)
    where = f"of namespace {namespace}" if namespace is not None else "of every namespace"
    out.print(f"purged {purged} cached answer{'' if purged == 1 else 's'} {where}", markup=False)


# -- route ------------------------------------------------------------------------------------


@route_app.command("explain")
def route_explain(
    prompt: Annotated[str, typer.Argument(help="The question: the user message of the chat request.")],
    model: Annotated[
        str | None,
        typer.Option(help="The routed model asked for. Default: the configuration's only one.", show_default=False),
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            help="The caller's tier, for rules on tiers. Default: the configuration's first.", show_default=False
        ),
    ] = None,
    key_id: Annotated[str, typer.Option(help="The caller's key id, for rules on keys.")] = "explain",
    json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show which class and model a routed model gives a chat request, and why.

    PROMPT is classified as the gateway classifies a chat request
    with it as the user's message: by the classes' rules, then by
    their examples (with the local embedding model, which takes a
    second or so to load), then the default class. Nothing is sent
    to any provider.
    """
    from ..auth import Principal
    from ..tiering import RoutePlanner

    cfg = _key_config(config)
    routed = [m.name for m in cfg.models if m.route is not None]
    if model is None:
        if not routed:
            raise _fail("the configuration has no routed model (a model with `route:`); give --config FILE")
        if len(routed) > 1:
            raise _fail(f"the configuration has several routed models ({', '.join(routed)}): choose one with --model")
        model = routed[0]
    chosen = cfg.model_named(model)
    if chosen is None:
        raise _fail(f"no model named {model!r} in the configuration")
    if chosen.route is None:
        listed = f"; its routed models: {', '.join(routed)}" if routed else ""
        raise _fail(f"{model!r} is not a routed model (it has no `route:`){listed}")
    if tier is None:
        tier = next(iter(cfg.tiers))
    elif tier not in cfg.tiers:
        raise _fail(f"no tier named {tier!r}; the configuration's tiers: {', '.join(cfg.tiers)}")
    # The examples need the embedding model; this command has only the local one (an embeddings
    # model of the configuration is served through a running gateway).
    examples = any(route_class.examples for route_class in chosen.route.classes)
    if examples and cfg.cache.embedding != "local":
        raise _fail(
            f"{model}'s classes have examples, which the gateway compares with cache.embedding "
            f"{cfg.cache.embedding!r}: explain needs the local embedding model (cache.embedding: local); "
            "with another, send the request to a running gateway and read its x-quotagate-route header",
            code=2,
        )
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    principal = Principal(key_id=key_id, user=key_id, tier=tier, models=None)

    async def explain(name: str) -> RoutePlan:
        embedder = None
        if examples:
            from ..cache._embedder import LocalEmbedder

            embedder = LocalEmbedder()
        try:
            if embedder is not None:
                try:
                    await embedder.start()
                except Exception as exc:
                    raise _fail(f"cannot load the local embedding model: {type(exc).__name__}: {exc}") from None
            planner = RoutePlanner(cfg, embedder)
            await planner.start()
            return await planner.plan(name, body, principal)
        finally:
            if embedder is not None:
                await embedder.aclose()

    plan = asyncio.run(explain(model))
    answer = {
        "routed": plan.routed,
        "route_class": plan.route_class,
        "model": plan.model,
        "models": list(plan.models),
        "strongest": plan.strongest,
        "reason": plan.reason,
        "detail": plan.detail,
        "tier": tier,
        "key_id": key_id,
    }
    if json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        return
    for label, value in (
        ("routed model", plan.routed),
        ("class", plan.route_class),
        ("model", plan.model),
        ("move-up chain", " -> ".join(plan.models)),
        ("why", plan.reason),
        ("detail", plan.detail),
    ):
        out.print(f"{label + ':':<15}{value}", markup=False)


def main() -> None:
    app()
