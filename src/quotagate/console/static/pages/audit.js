// Audit: every admin action, newest first (GET /admin/audit, a page at a time with ?before=ID);
// and, for an admin, the admin keys (GET/POST /admin/admin-keys, DELETE /admin/admin-keys/{id}):
// who else may use the console and the admin API, with which role.

import { ApiError } from "../api.js";
import { badge, confirmDialog, el, field, formatTime, select, table } from "../ui.js";
import { secretDialog, stackOnPhone } from "./keys.js";

const PAGE_SIZE = 25;
const NEWEST = "newest";
const ROLES = [
  ["viewer", "viewer: reads everything, changes nothing"],
  ["team_admin", "team admin: manages one team's keys"],
  ["admin", "admin: everything"],
];

function actionKind(action) {
  if (/\.(delete|disable|rotate)$/.test(action) || action === "cache.purge") return "warn";
  if (/\.(create|enable)$/.test(action)) return "ok";
  return "neutral";
}

/** An entry's details as "name=value" pairs; objects (limit changes) as compact JSON. */
function detailsText(details) {
  if (!details || typeof details !== "object") return "";
  return Object.entries(details)
    .map(([name, value]) => {
      if (value === null) return `${name}=none`;
      return `${name}=${typeof value === "object" ? JSON.stringify(value) : String(value)}`;
    })
    .join(", ");
}

function targetCell(entry) {
  if (!entry.target) return el("span", { class: "muted" }, "—");
  // A key that still exists has a page; a deleted one's link says so when followed.
  if (entry.action.startsWith("key.") && entry.action !== "key.delete") {
    return el("a", { class: "mono", href: `#/keys?key=${encodeURIComponent(entry.target)}` }, entry.target);
  }
  return el("span", { class: "mono" }, entry.target);
}

function auditTable(entries) {
  const node = table(
    [
      { label: "Time", value: (e) => el("time", { datetime: e.ts }, formatTime(e.ts)) },
      {
        label: "Who",
        value: (e) => el("span", {}, e.actor_name || e.actor, e.actor_name && e.actor !== "master" ? el("span", { class: "muted mono" }, ` ${e.actor}`) : null),
      },
      { label: "Action", value: (e) => badge(e.action, actionKind(e.action)) },
      { label: "Target", value: targetCell },
      { label: "Details", className: "wrap", value: (e) => detailsText(e.details) },
    ],
    entries,
    {
      caption: "Audit log, newest first",
      captionHidden: true,
      empty: "Nothing has been done yet.",
      rowAttrs: (e) => ({ dataset: { id: e.id, action: e.action, target: e.target || "" } }),
    },
  );
  return stackOnPhone(node);
}

async function renderLog(container, ctx) {
  const section = el("section", { class: "audit-section", "aria-labelledby": "audit-title" }, el("h2", { id: "audit-title" }, "Audit log"));
  container.append(section);
  // The cursors of the pages before this one (NEWEST for the first), so that "Newer" can go
  // back: the API pages only towards older entries.
  const before = ctx.params.get("before");
  const stack = (ctx.params.get("back") || "").split(",").filter(Boolean);
  let page;
  try {
    page = await ctx.api.get("/admin/audit", { limit: PAGE_SIZE, before });
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      section.append(el("p", { role: "note", class: "muted" }, error.message));
      return;
    }
    throw error;
  }
  if (ctx.signal.aborted) return;
  const newer = el("button", { type: "button", class: "secondary", disabled: !before }, "← Newer");
  const older = el("button", { type: "button", class: "secondary", disabled: !page.has_more }, "Older →");
  const first = page.data[0];
  const last = page.data[page.data.length - 1];
  const range = el("p", { class: "status-line", "aria-live": "polite" }, page.data.length ? `Entries ${first.id} to ${last.id}${page.has_more ? "; older ones follow" : ""}.` : "");
  newer.addEventListener("click", () => {
    const previous = stack.pop();
    const query = new URLSearchParams();
    if (previous && previous !== NEWEST) query.set("before", previous);
    if (stack.length) query.set("back", stack.join(","));
    ctx.navigate(`#/audit${query.toString() ? `?${query}` : ""}`);
  });
  older.addEventListener("click", () => {
    const query = new URLSearchParams({ before: String(last.id), back: [...stack, before || NEWEST].join(",") });
    ctx.navigate(`#/audit?${query}`);
  });
  section.append(auditTable(page.data), el("nav", { class: "pager", "aria-label": "Audit log pages" }, newer, older, range));
}

function adminKeyTable(keys, ctx, reload) {
  const node = table(
    [
      { label: "Id", value: (k) => el("span", { class: "mono" }, k.id) },
      { label: "Name", value: (k) => k.name },
      { label: "Role", value: (k) => badge(k.role.replace("_", " "), k.role === "admin" ? "warn" : "neutral") },
      { label: "Team", value: (k) => k.team || el("span", { class: "muted" }, "—") },
      { label: "Hint", value: (k) => el("span", { class: "mono" }, k.key_hint) },
      { label: "Created", value: (k) => formatTime(k.created_at) },
      {
        label: "Actions",
        value: (k) => {
          const remove = el("button", { type: "button", class: "danger small", dataset: { action: "delete" }, "aria-label": `Delete admin key ${k.name} (${k.id})` }, "Delete");
          remove.addEventListener("click", async () => {
            const ok = await confirmDialog(`Admin key ${k.name} (${k.id}) stops working at once, and its console sessions end.`, {
              title: "Delete this admin key?",
              confirmLabel: "Delete",
              danger: true,
            });
            if (!ok) return;
            try {
              await ctx.api.send("DELETE", `/admin/admin-keys/${encodeURIComponent(k.id)}`);
              ctx.toast(`Admin key ${k.name} deleted.`, "success");
              await reload();
            } catch (error) {
              ctx.toast(error.message, "error");
            }
          });
          return remove;
        },
      },
    ],
    keys,
    { caption: "Admin keys", captionHidden: true, empty: "No admin keys: only the master key.", rowAttrs: (k) => ({ dataset: { adminKey: k.id, role: k.role } }) },
  );
  return stackOnPhone(node);
}

function adminKeyForm(ctx, teams, created) {
  const name = el("input", { type: "text", name: "name", required: true, autocomplete: "off", maxlength: "200" });
  const role = select(ROLES, "viewer", { name: "role" });
  const team = select([["", "(choose a team)"], ...teams], "", { name: "team", disabled: true });
  const error = el("p", { class: "form-error", role: "alert" });
  const submit = el("button", { type: "submit", class: "primary" }, "Create admin key");
  role.addEventListener("change", () => {
    team.disabled = role.value !== "team_admin";
    if (team.disabled) team.value = "";
  });
  const form = el(
    "form",
    { class: "panel admin-key-form", "aria-label": "Create an admin key", novalidate: true },
    el("div", { class: "form-grid" }, field("Name", name, "who or what holds it"), field("Role", role), field("Team", team, "for a team admin only")),
    error,
    el("div", { class: "form-actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    name.removeAttribute("aria-invalid");
    if (!name.value.trim()) {
      name.setAttribute("aria-invalid", "true");
      error.textContent = "An admin key needs a name.";
      name.focus();
      return;
    }
    if (role.value === "team_admin" && !team.value) {
      error.textContent = "A team admin needs a team.";
      team.focus();
      return;
    }
    submit.disabled = true;
    try {
      const answer = await ctx.api.send("POST", "/admin/admin-keys", {
        name: name.value.trim(),
        role: role.value,
        team: role.value === "team_admin" ? team.value : null,
      });
      form.reset();
      team.disabled = true;
      await created(answer);
    } catch (err) {
      error.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function renderAdminKeys(container, ctx) {
  const [keys, teams] = await Promise.all([ctx.api.get("/admin/admin-keys"), ctx.api.get("/admin/teams")]);
  if (ctx.signal.aborted) return;
  const tableSlot = el("div");
  const reload = async () => {
    const fresh = await ctx.api.get("/admin/admin-keys");
    if (!ctx.signal.aborted) tableSlot.replaceChildren(adminKeyTable(fresh.data, ctx, reload));
  };
  tableSlot.append(adminKeyTable(keys.data, ctx, reload));
  const form = adminKeyForm(ctx, Object.keys(teams.data), async (answer) => {
    await secretDialog(`Admin key created (${answer.role.replace("_", " ")})`, answer.key, "admin key");
    await reload();
  });
  container.append(
    el(
      "section",
      { class: "admin-keys-section", "aria-labelledby": "admin-keys-title" },
      el("h2", { id: "admin-keys-title" }, "Admin keys"),
      el("p", { class: "muted" }, "Keys for the console and the admin API besides the master key. Their actions are logged under their id."),
      tableSlot,
      el("h3", { class: "form-title" }, "Create an admin key"),
      form,
    ),
  );
}

export default {
  id: "audit",
  title: "Audit",
  async render(container, ctx) {
    await renderLog(container, ctx);
    if (ctx.session.role === "admin" && !ctx.signal.aborted) await renderAdminKeys(container, ctx);
  },
};
