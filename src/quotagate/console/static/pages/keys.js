// Keys: the gateway keys (GET /admin/keys), searched here in the page; creating one (its secret
// shown once), disabling, rotating and deleting; and one key's page (#/keys?key=ID) with its
// settings, its limit overrides and its live limits (GET /admin/keys/{id}/quota, every 5 s).
//
// Also exports what the teams and audit pages draw the same way: live limit bars and the
// one-time secret dialog.

import { ApiError } from "../api.js";
import {
  badge,
  bar,
  confirmDialog,
  el,
  errorBox,
  field,
  formatDuration,
  formatNumber,
  formatTime,
  formatUsd,
  select,
  table,
  uid,
} from "../ui.js";

const REFRESH_MS = 5000;

// The shorthands a key may override (config LimitValues), in the order people think of them.
const LIMIT_FIELDS = [
  ["rpm", "Requests per minute", "count"],
  ["rph", "Requests per hour", "count"],
  ["rpd", "Requests per day", "count"],
  ["requests_per_month", "Requests per month", "count"],
  ["tpm", "Tokens per minute", "count"],
  ["tph", "Tokens per hour", "count"],
  ["tpd", "Tokens per day", "count"],
  ["tokens_per_month", "Tokens per month", "count"],
  ["itpm", "Input tokens per minute", "count"],
  ["otpm", "Output tokens per minute", "count"],
  ["concurrency", "Requests in flight", "count"],
  ["usd_per_day", "Budget per day (USD)", "usd"],
  ["usd_per_month", "Budget per month (USD)", "usd"],
];
const LIMIT_NAMES = new Set(LIMIT_FIELDS.map(([name]) => name));

/** A key's state as a word: disabled wins over expired. */
export function keyStatus(key, now = Date.now()) {
  if (key.disabled) return "disabled";
  if (key.expires_at && new Date(key.expires_at).getTime() <= now) return "expired";
  return "active";
}

function statusBadge(key) {
  const status = keyStatus(key);
  return badge(status, status === "active" ? "ok" : status === "expired" ? "warn" : "danger");
}

/** A tier's or team's configured limits as one line: "rpm 300 · usd_per_day $50.00". */
export function describeLimits(values) {
  const parts = Object.entries(values || {})
    .filter(([name]) => LIMIT_NAMES.has(name))
    .map(([name, value]) => `${name} ${name.startsWith("usd_") ? formatUsd(value) : formatNumber(value)}`);
  return parts.length ? parts.join(" · ") : "no limits of its own";
}

/** One live limit (an entry of a quota answer) as a labelled bar with remaining and reset. */
function limitItem(entry) {
  const spend = entry.unit === "spend" && entry.limit_usd !== undefined;
  const used = spend ? entry.used_usd : entry.used;
  const limit = spend ? entry.limit_usd : entry.limit;
  const remaining = spend ? entry.remaining_usd : entry.remaining;
  const format = spend ? formatUsd : (value) => formatNumber(value, { integer: true });
  const unit = spend ? "" : ` ${entry.unit}`;
  const resets = entry.reset_in_seconds > 0 ? `resets in ${formatDuration(entry.reset_in_seconds * 1000)} (${formatTime(entry.resets_at)})` : "nothing in use";
  return el(
    "li",
    {
      class: "limit",
      dataset: { limit: entry.name, scope: entry.scope, used: String(entry.used), max: String(entry.limit), remaining: String(entry.remaining) },
    },
    bar(used, limit, entry.name, { format, text: `${format(used)} of ${format(limit)}${unit}` }),
    el(
      "p",
      { class: "limit-meta" },
      badge(entry.scope, "neutral"),
      " ",
      el("span", { class: "limit-remaining" }, `${format(remaining)}${unit} remaining`),
      " · ",
      el("span", { class: "limit-reset" }, resets),
    ),
  );
}

/**
 * Marks a table (from ui.table) to be shown as one card per row on a phone: each cell gets its
 * column's name (data-label), which the stylesheet writes before it there.
 */
export function stackOnPhone(wrap) {
  const labels = [...wrap.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of wrap.querySelectorAll("tbody tr:not(.empty)")) {
    [...row.children].forEach((cell, index) => {
      cell.dataset.label = labels[index];
    });
  }
  wrap.classList.add("stack-on-phone");
  return wrap;
}

/** A quota answer's limits as a list of bars; `empty` when there are none. */
export function limitList(limits, empty = "No limits apply.") {
  if (!limits.length) return el("p", { class: "muted limit-empty" }, empty);
  return el("ul", { class: "limits" }, limits.map(limitItem));
}

/**
 * Shows a secret that the gateway will not show again, with a copy button, in a modal dialog.
 * Resolves when the dialog is closed. The secret is in a read-only field so that it can also be
 * selected by hand where the clipboard is not allowed (plain http on another host).
 */
export function secretDialog(title, secret, what = "key") {
  const previous = document.activeElement;
  const titleId = uid("secret-title");
  const fieldId = uid("secret");
  // A textarea, so that the whole key shows, wrapped, rather than scrolled out of sight.
  const input = el("textarea", { id: fieldId, class: "mono secret-value", readonly: true, rows: "2", spellcheck: "false", autocomplete: "off" });
  input.value = secret;
  const copied = el("span", { class: "copy-status", role: "status", "aria-live": "polite" });
  const copy = el("button", { type: "button", class: "secondary" }, "Copy");
  const done = el("button", { type: "button", class: "primary" }, "Done");
  copy.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(secret);
      copied.textContent = "Copied.";
    } catch {
      // No clipboard permission (an insecure origin): the text is selected for Ctrl+C.
      copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  const dialog = el(
    "dialog",
    { class: "dialog secret-dialog", "aria-labelledby": titleId },
    el("h2", { id: titleId }, title),
    el("p", { class: "secret-warning" }, el("strong", {}, "Copy it now: "), `this ${what} will not be shown again.`),
    el("div", { class: "field" }, el("label", { for: fieldId }, `The new ${what}`), el("div", { class: "secret-row" }, input, copy)),
    copied,
    el("div", { class: "dialog-actions" }, done),
  );
  document.body.append(dialog);
  return new Promise((resolve) => {
    done.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (previous && typeof previous.focus === "function") previous.focus();
      resolve();
    });
    dialog.showModal();
    input.focus();
    input.select();
  });
}

function parseLimit(kind, text) {
  const value = kind === "usd" ? Number.parseFloat(text) : Number.parseInt(text, 10);
  return Number.isFinite(value) ? value : null;
}

/** Number inputs for the limit overrides, filled from `current`; read() gives the changed ones. */
function limitInputs(current = {}) {
  const inputs = LIMIT_FIELDS.map(([name, label, kind]) => {
    const input = el("input", {
      type: "number",
      name,
      inputmode: kind === "usd" ? "decimal" : "numeric",
      min: kind === "usd" ? "0.000001" : "1",
      step: kind === "usd" ? "any" : "1",
      value: current[name] ?? "",
      placeholder: "tier's",
    });
    return { name, kind, input, node: field(label, input) };
  });
  return {
    node: el("div", { class: "limit-fields" }, inputs.map((i) => i.node)),
    /** {name: value} of the fields filled in; with `patch`, null for those emptied. */
    read(patch = false) {
      const values = {};
      for (const { name, kind, input } of inputs) {
        const value = input.value.trim() === "" ? null : parseLimit(kind, input.value);
        if (value !== null) values[name] = value;
        else if (patch && current[name] !== undefined) values[name] = null;
      }
      return values;
    },
  };
}

function actionButtons(key, ctx, reload) {
  if (!ctx.canWrite) return null;
  const label = key.name ? `${key.name} (${key.id})` : key.id;
  const toggle = el(
    "button",
    { type: "button", class: "secondary small", dataset: { action: key.disabled ? "enable" : "disable" }, "aria-label": `${key.disabled ? "Enable" : "Disable"} key ${label}` },
    key.disabled ? "Enable" : "Disable",
  );
  const rotate = el("button", { type: "button", class: "secondary small", dataset: { action: "rotate" }, "aria-label": `Rotate key ${label}` }, "Rotate");
  const remove = el("button", { type: "button", class: "danger small", dataset: { action: "delete" }, "aria-label": `Delete key ${label}` }, "Delete");
  toggle.addEventListener("click", async () => {
    const action = key.disabled ? "enable" : "disable";
    toggle.disabled = true;
    try {
      await ctx.api.send("POST", `/admin/keys/${encodeURIComponent(key.id)}/${action}`);
      ctx.toast(`Key ${label} ${action}d.`, "success");
      await reload();
    } catch (error) {
      ctx.toast(error.message, "error");
      toggle.disabled = false;
    }
  });
  rotate.addEventListener("click", async () => {
    const ok = await confirmDialog(
      `Key ${label} gets a new secret; the current one stops working at once. Its id, settings and usage stay.`,
      { title: "Rotate this key?", confirmLabel: "Rotate", danger: true },
    );
    if (!ok) return;
    try {
      const rotated = await ctx.api.send("POST", `/admin/keys/${encodeURIComponent(key.id)}/rotate`);
      await secretDialog("Key rotated", rotated.key);
      await reload();
    } catch (error) {
      ctx.toast(error.message, "error");
    }
  });
  remove.addEventListener("click", async () => {
    const ok = await confirmDialog(`Key ${label} stops working at once and cannot be brought back. Its ledger rows stay.`, {
      title: "Delete this key?",
      confirmLabel: "Delete",
      danger: true,
    });
    if (!ok) return;
    try {
      await ctx.api.send("DELETE", `/admin/keys/${encodeURIComponent(key.id)}`);
      ctx.toast(`Key ${label} deleted.`, "success");
      await reload(true);
    } catch (error) {
      ctx.toast(error.message, "error");
    }
  });
  return el("div", { class: "row-actions", role: "group", "aria-label": `Actions for key ${label}` }, toggle, rotate, remove);
}

function matches(key, words) {
  const haystack = [key.id, key.name, key.user, key.team, key.tier, key.key_hint].filter(Boolean).join(" ").toLowerCase();
  return words.every((word) => haystack.includes(word));
}

function keyTable(keys, ctx, reload) {
  const columns = [
    { label: "Id", value: (k) => el("a", { class: "mono", href: `#/keys?key=${encodeURIComponent(k.id)}` }, k.id) },
    { label: "Name", value: (k) => k.name || el("span", { class: "muted" }, "—") },
    { label: "User", value: (k) => k.user },
    { label: "Team", value: (k) => k.team || el("span", { class: "muted" }, "—") },
    { label: "Tier", value: (k) => k.tier },
    { label: "Hint", value: (k) => el("span", { class: "mono" }, k.key_hint) },
    { label: "Created", value: (k) => formatTime(k.created_at) },
    { label: "Expires", value: (k) => (k.expires_at ? formatTime(k.expires_at) : el("span", { class: "muted" }, "never")) },
    { label: "Status", value: (k) => statusBadge(k) },
  ];
  if (ctx.canWrite) columns.push({ label: "Actions", value: (k) => actionButtons(k, ctx, reload) });
  return stackOnPhone(
    table(columns, keys, {
      caption: "Keys",
      captionHidden: true,
      empty: "No key matches.",
      rowAttrs: (k) => ({ dataset: { key: k.id, status: keyStatus(k) } }),
    }),
  );
}

/** The create form; `created(answer)` is called with the admin API's 201 body. */
function createForm(ctx, tiers, teams, created) {
  const fixedTeam = ctx.session.role === "team_admin" ? ctx.session.team : null;
  const user = el("input", { type: "text", name: "user", required: true, autocomplete: "off", maxlength: "200" });
  const tier = select(Object.keys(tiers), Object.keys(tiers)[0], { name: "tier", required: true });
  const teamOptions = fixedTeam ? [fixedTeam] : [["", "(no team)"], ...Object.keys(teams)];
  const team = select(teamOptions, fixedTeam || "", { name: "team", disabled: Boolean(fixedTeam) });
  const name = el("input", { type: "text", name: "name", autocomplete: "off", maxlength: "200" });
  const models = el("input", { type: "text", name: "models", autocomplete: "off", placeholder: "every model" });
  const expires = el("input", { type: "datetime-local", name: "expires_at" });
  const limits = limitInputs();
  const error = el("p", { class: "form-error", role: "alert" });
  const submit = el("button", { type: "submit", class: "primary" }, "Create key");
  const form = el(
    "form",
    { class: "panel create-form", "aria-label": "Create a key", novalidate: true },
    el("h2", {}, "Create a key"),
    el(
      "div",
      { class: "form-grid" },
      field("User", user, "who the key is for; limits of scope user are shared by their keys"),
      field("Tier", tier),
      field("Team", team, fixedTeam ? "a team admin's keys are its team's" : "its limits are shared by the team's keys"),
      field("Name", name, "optional: what the key is for"),
      field("Models", models, "optional: comma-separated names; empty for every model"),
      field("Expires", expires, "optional: your local time"),
    ),
    el("details", { class: "limit-details" }, el("summary", {}, "Limit overrides (optional; the tier's apply otherwise)"), limits.node),
    error,
    el("div", { class: "form-actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    user.removeAttribute("aria-invalid");
    if (!user.value.trim()) {
      user.setAttribute("aria-invalid", "true");
      error.textContent = "A key needs a user.";
      user.focus();
      return;
    }
    const body = { user: user.value.trim(), tier: tier.value };
    const chosenTeam = fixedTeam || team.value;
    if (chosenTeam) body.team = chosenTeam;
    if (name.value.trim()) body.name = name.value.trim();
    const modelList = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (modelList.length) body.models = modelList;
    if (expires.value) {
      const when = new Date(expires.value);
      if (Number.isNaN(when.getTime())) {
        error.textContent = "The expiry is not a date and time.";
        return;
      }
      body.expires_at = when.toISOString();
    }
    const overrides = limits.read();
    if (Object.keys(overrides).length) body.limits = overrides;
    submit.disabled = true;
    try {
      const answer = await ctx.api.send("POST", "/admin/keys", body);
      form.reset();
      if (fixedTeam) team.value = fixedTeam;
      await created(answer);
    } catch (err) {
      error.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function renderList(container, ctx) {
  const [keys, tiers, teams] = await Promise.all([
    ctx.api.get("/admin/keys"),
    ctx.api.get("/admin/tiers"),
    ctx.api.get("/admin/teams"),
  ]);
  if (ctx.signal.aborted) return;
  let all = keys.data;
  const search = el("input", { type: "search", name: "q", value: ctx.params.get("q") || "", placeholder: "user, name, id or team", autocomplete: "off" });
  const count = el("p", { class: "status-line", "aria-live": "polite" });
  const tableSlot = el("div", { class: "keys-table" });
  const toolbar = el("div", { class: "toolbar", role: "search", "aria-label": "Keys" }, field("Search keys", search), el("span", { class: "spacer" }), count);
  const formSlot = el("div");

  const draw = () => {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = all.filter((key) => matches(key, words));
    count.textContent = words.length ? `${shown.length} of ${all.length} keys` : `${all.length} keys`;
    tableSlot.replaceChildren(keyTable(shown, ctx, reload));
  };
  const reload = async () => {
    const fresh = await ctx.api.get("/admin/keys");
    if (ctx.signal.aborted) return;
    all = fresh.data;
    draw();
  };
  search.addEventListener("input", () => {
    ctx.setParams({ q: search.value.trim() });
    draw();
  });

  if (ctx.canWrite) {
    const toggle = el("button", { type: "button", class: "primary", "aria-expanded": "false", "aria-controls": "create-key" }, "New key");
    const form = createForm(ctx, tiers.data, teams.data, async (answer) => {
      await secretDialog("Key created", answer.key);
      form.hidden = true;
      toggle.setAttribute("aria-expanded", "false");
      toggle.focus();
      await reload();
    });
    form.id = "create-key";
    form.hidden = true;
    toggle.addEventListener("click", () => {
      const open = form.hidden;
      form.hidden = !open;
      toggle.setAttribute("aria-expanded", String(open));
      if (open) form.querySelector("input").focus();
    });
    toolbar.insertBefore(toggle, toolbar.querySelector(".spacer"));
    formSlot.append(form);
  }
  container.append(toolbar, formSlot, tableSlot);
  draw();
}

function detailList(key) {
  const row = (label, value, name) => [el("dt", {}, label), el("dd", { dataset: { field: name } }, value)];
  const overrides = key.limits && Object.keys(key.limits).length ? describeLimits(key.limits) : el("span", { class: "muted" }, "none (the tier's)");
  return el(
    "dl",
    { class: "details-list" },
    row("Id", el("span", { class: "mono" }, key.id), "id"),
    row("Name", key.name || "—", "name"),
    row("User", key.user, "user"),
    row("Team", key.team || "—", "team"),
    row("Tier", key.tier, "tier"),
    row("Models", key.models ? key.models.join(", ") : "every model", "models"),
    row("Hint", el("span", { class: "mono" }, key.key_hint), "key_hint"),
    row("Created", formatTime(key.created_at), "created_at"),
    row("Expires", key.expires_at ? formatTime(key.expires_at) : "never", "expires_at"),
    row("Status", statusBadge(key), "status"),
    row("Limit overrides", overrides, "limits"),
  );
}

function overridesForm(key, ctx, reload) {
  const current = key.limits || {};
  const limits = limitInputs(current);
  const error = el("p", { class: "form-error", role: "alert" });
  const save = el("button", { type: "submit", class: "primary" }, "Save limits");
  const form = el(
    "form",
    { class: "panel overrides-form", "aria-label": "Limit overrides", novalidate: true },
    el("h2", {}, "Limit overrides"),
    el("p", { class: "muted" }, "Empty fields take the tier's limit."),
    limits.node,
    error,
    el("div", { class: "form-actions" }, save),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const patch = limits.read(true);
    if (!Object.keys(patch).length) {
      error.textContent = "Nothing changed.";
      return;
    }
    save.disabled = true;
    try {
      await ctx.api.send("PATCH", `/admin/keys/${encodeURIComponent(key.id)}`, { limits: patch });
      ctx.toast("Limits saved.", "success");
      await reload();
    } catch (err) {
      error.textContent = err.message;
      save.disabled = false;
    }
  });
  return form;
}

async function renderDetail(container, ctx, keyId) {
  const path = `/admin/keys/${encodeURIComponent(keyId)}`;
  const back = el("p", { class: "back-link" }, el("a", { href: "#/keys" }, "← All keys"));
  container.append(back);
  let key;
  try {
    key = await ctx.api.get(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      container.append(el("p", { role: "alert" }, `There is no key ${keyId}${ctx.session.role === "team_admin" ? " in your team" : ""}.`));
      return;
    }
    throw error;
  }
  if (ctx.signal.aborted) return;
  const heading = el("h2", { class: "key-title" }, key.name || key.id);
  const info = el("div", { class: "panel key-info" });
  const limitsPanel = el("section", { class: "panel key-limits", "aria-labelledby": "key-limits-title" });
  const updated = el("p", { class: "status-line", "aria-live": "off" });
  const limitsBody = el("div", { class: "limits-body" });
  limitsPanel.append(el("h2", { id: "key-limits-title" }, "Live limits"), updated, limitsBody);
  const formSlot = el("div");

  const drawInfo = () => {
    heading.textContent = key.name || key.id;
    info.replaceChildren(detailList(key), actionButtons(key, ctx, reloadKey) || "");
    if (ctx.canWrite) formSlot.replaceChildren(overridesForm(key, ctx, reloadKey));
  };
  const reloadKey = async (gone = false) => {
    if (gone) {
      ctx.navigate("#/keys");
      return;
    }
    key = await ctx.api.get(path);
    if (ctx.signal.aborted) return;
    drawInfo();
    await refreshLimits();
  };
  const refreshLimits = async () => {
    try {
      const quota = await ctx.api.get(`${path}/quota`);
      if (ctx.signal.aborted) return;
      limitsBody.replaceChildren(limitList(quota.limits));
      updated.textContent = `Updated ${formatTime(new Date())}; refreshed every ${REFRESH_MS / 1000} s.`;
    } catch (error) {
      if (ctx.signal.aborted) return;
      limitsBody.replaceChildren(errorBox(error));
    }
  };
  container.append(heading, el("div", { class: "split" }, info, limitsPanel), formSlot);
  drawInfo();
  await refreshLimits();
  const timer = setInterval(() => {
    if (!document.hidden) refreshLimits();
  }, REFRESH_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer));
}

export default {
  id: "keys",
  title: "Keys",
  async render(container, ctx) {
    const keyId = ctx.params.get("key");
    if (keyId) await renderDetail(container, ctx, keyId);
    else await renderList(container, ctx);
  },
};
