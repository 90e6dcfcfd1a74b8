// Ledger: the request log (GET /admin/ledger), newest first, filtered and paged by its cursor,
// and the same rows as CSV (GET /admin/ledger?format=csv with the same filters).

import { withQuery } from "../api.js";
import { badge, el, field, formatDuration, formatNumber, formatTime, formatUsd, select, table, uid } from "../ui.js";

const TEXT_FILTERS = [
  ["key", "Key id", "key_…"],
  ["user", "User", ""],
  ["team", "Team", ""],
  ["model", "Model", ""],
  ["deployment", "Deployment", ""],
];
/** A field for a date and time (wider; a whole row on a phone). */
function wide(node) {
  node.classList.add("field-wide");
  return node;
}

/** A field for a short value; its hint is for screen readers (the placeholder shows it). */
function narrow(node) {
  node.classList.add("field-narrow");
  const hint = node.querySelector(".hint");
  if (hint) hint.classList.add("visually-hidden");
  return node;
}

const STATUSES = ["ok", "error", "400", "401", "403", "404", "413", "429", "499", "500", "502", "503", "504"];
const PAGE_SIZES = ["10", "25", "50", "100", "200"];

/** A datetime-local value (the user's local time) as ISO 8601 UTC, or "" . */
function toIso(local) {
  if (!local) return "";
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

/** An ISO time as a datetime-local value in the user's time zone. */
function toLocal(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function statusBadge(row) {
  const kind = row.status < 400 ? "ok" : row.status === 429 || row.status === 499 ? "warn" : "danger";
  return badge(row.cache_hit ? `${row.status} cached` : String(row.status), kind);
}

function modelText(row) {
  const served = row.model_served;
  const asked = row.model_requested;
  if (served && asked && served !== asked) return `${asked} → ${served}`;
  return served || asked || "—";
}

function tokensCell(row) {
  const total = (row.prompt_tokens || 0) + (row.completion_tokens || 0);
  const detail = `${formatNumber(row.prompt_tokens || 0, { integer: true })} prompt, ${formatNumber(row.completion_tokens || 0, { integer: true })} completion, ${formatNumber(row.cached_tokens || 0, { integer: true })} cached`;
  return el("span", { title: detail }, formatNumber(total, { integer: true }), el("span", { class: "visually-hidden" }, ` (${detail})`));
}

/**
 * A deployment's label, "gpt-4o-mini#0 (openai/gpt-4o-mini)", shortened to the part before the
 * provider (the model has its own column); the whole label is the tooltip and what a screen
 * reader reads.
 */
function deploymentCell(label) {
  if (!label) return "—";
  const cut = label.indexOf(" (");
  if (cut <= 0) return label;
  return el(
    "span",
    { title: label, dataset: { label } },
    el("span", { "aria-hidden": "true" }, label.slice(0, cut)),
    el("span", { class: "visually-hidden" }, label),
  );
}

const COLUMNS = [
  { label: "Time", value: (r) => el("time", { datetime: r.ts }, formatTime(r.ts)) },
  { label: "Key", value: (r) => el("span", { class: "mono" }, r.key_id || "—") },
  { label: "User", value: (r) => r.user || "—" },
  { label: "Model", value: modelText },
  { label: "Deployment", value: (r) => deploymentCell(r.deployment) },
  { label: "Tokens", numeric: true, value: tokensCell },
  { label: "Cost", numeric: true, value: (r) => formatUsd(r.cost_usd) },
  { label: "Latency", numeric: true, value: (r) => formatDuration(r.latency_ms) },
  {
    label: "Status",
    value: statusBadge,
  },
  { label: "Error", value: (r) => r.error_type || "" },
];

export default {
  id: "ledger",
  title: "Ledger",
  async render(container, ctx) {
    const inputs = {};
    const since = el("input", { type: "datetime-local", name: "since", value: toLocal(ctx.params.get("since")) });
    const until = el("input", { type: "datetime-local", name: "until", value: toLocal(ctx.params.get("until")) });
    const suggestions = {};
    for (const [name, , placeholder] of TEXT_FILTERS) {
      const listId = uid(`ledger-${name}`);
      suggestions[name] = el("datalist", { id: listId });
      inputs[name] = el("input", {
        type: "text",
        name,
        value: ctx.params.get(name) || "",
        list: listId,
        placeholder: placeholder || null,
        autocomplete: "off",
        spellcheck: "false",
      });
    }
    const statusList = el("datalist", { id: uid("ledger-status") }, STATUSES.map((s) => el("option", { value: s })));
    const status = el("input", { type: "text", name: "status", value: ctx.params.get("status") || "", list: statusList.id, placeholder: "ok, error…", autocomplete: "off" });
    const limit = select(PAGE_SIZES, PAGE_SIZES.includes(ctx.params.get("limit")) ? ctx.params.get("limit") : "50", { name: "limit" });
    const apply = el("button", { type: "submit" }, "Apply filters");
    const reset = el("button", { type: "button", class: "secondary" }, "Clear");
    const csv = el("a", { class: ["button", "secondary"], href: "/admin/ledger?format=csv", download: "ledger.csv" }, "Export CSV");
    const form = el(
      "form",
      { class: "filter-bar", role: "search", "aria-label": "Ledger filters" },
      wide(field("Since", since)),
      wide(field("Until", until)),
      TEXT_FILTERS.map(([name, label]) => field(label, inputs[name])),
      narrow(field("Status", status, "ok, error or a code")),
      narrow(field("Rows per page", limit)),
      el("div", { class: "filter-actions" }, apply, reset, csv),
      Object.values(suggestions),
      statusList,
    );
    // On a phone the filters start folded, so that the rows are on the first screen.
    const folder = el(
      "details",
      { class: "filters-folder", open: !matchMedia("(max-width: 760px)").matches || [...ctx.params.keys()].length > 0 },
      el("summary", {}, "Filters and export"),
      form,
    );
    const summary = el("p", { class: "status-line", "aria-live": "polite" });
    const results = el("div", { class: "ledger-results" });
    const newer = el("button", { type: "button", class: "secondary" }, "← Newer");
    const next = el("button", { type: "button", class: "secondary" }, "Next (older) →");
    const pageLabel = el("span", { class: "muted" });
    container.append(folder, summary, results, el("nav", { class: "pager", "aria-label": "Ledger pages" }, newer, pageLabel, next));

    // Keyset paging: the cursors of the pages before this one, newest first.
    let cursors = [];
    let cursor = ctx.params.get("cursor") || null;
    let nextCursor = null;

    const filters = () => {
      const chosen = { since: toIso(since.value), until: toIso(until.value) };
      for (const [name] of TEXT_FILTERS) chosen[name] = inputs[name].value.trim();
      chosen.status = status.value.trim().toLowerCase();
      return chosen;
    };

    let generation = 0;
    const load = async () => {
      generation += 1;
      const mine = generation;
      const chosen = filters();
      csv.href = withQuery("/admin/ledger", { format: "csv", ...chosen });
      ctx.setParams({ ...chosen, limit: limit.value === "50" ? "" : limit.value, cursor: cursor || "" });
      summary.textContent = "Loading…";
      newer.disabled = true;
      next.disabled = true;
      try {
        const page = await ctx.api.get("/admin/ledger", { ...chosen, limit: limit.value, cursor });
        if (mine !== generation || ctx.signal.aborted) return;
        nextCursor = page.next_cursor || null;
        results.replaceChildren(
          table(COLUMNS, page.data, {
            caption: "Requests, newest first",
            captionHidden: true,
            empty: "No requests match these filters.",
            rowAttrs: (r) => ({ dataset: { requestId: r.request_id } }),
          }),
        );
        const first = cursors.length * Number(limit.value) + 1;
        summary.textContent = page.data.length
          ? `Rows ${formatNumber(first, { integer: true })}–${formatNumber(first + page.data.length - 1, { integer: true })}${nextCursor ? "" : " (the oldest)"}`
          : "No rows.";
        pageLabel.textContent = `Page ${cursors.length + 1}`;
        newer.disabled = cursors.length === 0 && !cursor;
        next.disabled = !nextCursor;
      } catch (error) {
        if (mine !== generation || ctx.signal.aborted) return;
        summary.textContent = "";
        results.replaceChildren(el("div", { class: "error-box", role: "alert" }, `Could not load the ledger: ${error.message}`));
        newer.disabled = cursors.length === 0 && !cursor;
      }
    };

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      cursors = [];
      cursor = null;
      load();
    });
    reset.addEventListener("click", () => {
      since.value = "";
      until.value = "";
      status.value = "";
      for (const input of Object.values(inputs)) input.value = "";
      cursors = [];
      cursor = null;
      load();
    });
    limit.addEventListener("change", () => {
      cursors = [];
      cursor = null;
      load();
    });
    next.addEventListener("click", () => {
      if (!nextCursor) return;
      cursors.push(cursor);
      cursor = nextCursor;
      load().then(() => next.disabled || next.focus());
    });
    newer.addEventListener("click", () => {
      // A page opened from an address with a cursor has no history: Newer goes to the newest.
      cursor = cursors.length ? cursors.pop() : null;
      load().then(() => newer.disabled || newer.focus());
    });

    suggest(ctx, suggestions);
    await load();
  },
};

/** Fills the filters' suggestion lists from what the admin API knows; a failure costs nothing. */
async function suggest(ctx, lists) {
  const fill = (name, values) => {
    lists[name].replaceChildren(...[...new Set(values)].sort().map((value) => el("option", { value })));
  };
  const tries = [
    ctx.api.get("/admin/deployments").then((a) => {
      fill("model", a.data.map((d) => d.model));
      fill("deployment", a.data.map((d) => d.label)); // the ledger names a deployment by its label
    }),
    ctx.api.get("/admin/teams").then((a) => fill("team", Object.keys(a.data))),
    ctx.api.get("/admin/users").then((a) => fill("user", a.data.map((u) => u.user))),
    ctx.api.get("/admin/keys").then((a) => fill("key", a.data.map((k) => k.id))),
  ];
  await Promise.allSettled(tries);
}
