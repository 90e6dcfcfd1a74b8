// Teams and users: each configured team (GET /admin/teams) with its shared limits and budgets,
// live (GET /admin/teams/{name}/quota, every 5 s), its keys and its spend this month; then the
// users that keys belong to (GET /admin/users) with their spend this month, and, for a user
// opened, the limits of scope user (GET /admin/users/{user}/quota) and their keys.

import { badge, el, formatNumber, formatTime, formatUsd, table } from "../ui.js";
import { describeLimits, keyStatus, limitList, stackOnPhone } from "./keys.js";

const REFRESH_MS = 5000;

/** The start of this month in the browser's time zone, as an ISO instant. */
function monthStart(now = new Date()) {
  return new Date(now.getFullYear(), now.getMonth(), 1).toISOString();
}

/** GET /admin/usage?by=... as {group name: row}. */
async function spendBy(ctx, by, since) {
  const report = await ctx.api.get("/admin/usage", { by, since });
  return new Map(report.data.map((row) => [row[by], row]));
}

function figure(label, text, name, value) {
  return el("div", { class: "card", dataset: { figure: name, value } }, el("dt", {}, label), el("dd", {}, text));
}

function teamPanel(name, config, keys, usage) {
  const titleId = `team-${name.replace(/[^A-Za-z0-9_-]/g, "_")}-title`;
  const limitsBody = el("div", { class: "limits-body" }, el("p", { class: "loading" }, "Loading limits…"));
  const section = el(
    "section",
    { class: "panel team", dataset: { team: name }, "aria-labelledby": titleId },
    el("h3", { id: titleId, class: "team-name" }, name),
    el(
      "dl",
      { class: "cards team-figures" },
      figure("Keys", formatNumber(keys, { integer: true }), "keys", keys),
      figure("Spend this month", formatUsd(usage ? usage.cost_usd : 0), "spend", usage ? usage.cost_usd : 0),
      figure("Requests this month", formatNumber(usage ? usage.requests : 0, { integer: true }), "requests", usage ? usage.requests : 0),
    ),
    el("p", { class: "team-config" }, el("span", { class: "muted" }, "Configured: "), describeLimits(config)),
    limitsBody,
  );
  return { section, limitsBody };
}

async function renderTeams(container, ctx, since, keys) {
  const [teams, usage] = await Promise.all([ctx.api.get("/admin/teams"), spendBy(ctx, "team", since)]);
  if (ctx.signal.aborted) return;
  const names = Object.keys(teams.data);
  const keysPerTeam = new Map();
  for (const key of keys) if (key.team) keysPerTeam.set(key.team, (keysPerTeam.get(key.team) || 0) + 1);
  const updated = el("p", { class: "status-line", "aria-live": "off" });
  const grid = el("div", { class: "team-grid" });
  const section = el("section", { class: "teams-section", "aria-labelledby": "teams-title" }, el("h2", { id: "teams-title" }, "Teams"), updated, grid);
  container.append(section);
  if (!names.length) {
    grid.append(el("p", { class: "muted" }, "No teams are configured (teams: in the configuration file)."));
    return;
  }
  const panels = names.map((name) => {
    const panel = teamPanel(name, teams.data[name], keysPerTeam.get(name) || 0, usage.get(name));
    grid.append(panel.section);
    return { name, ...panel };
  });
  const refresh = async () => {
    await Promise.all(
      panels.map(async ({ name, limitsBody }) => {
        try {
          const quota = await ctx.api.get(`/admin/teams/${encodeURIComponent(name)}/quota`);
          if (!ctx.signal.aborted) limitsBody.replaceChildren(limitList(quota.limits, "This team has no shared limits."));
        } catch (error) {
          if (!ctx.signal.aborted) limitsBody.replaceChildren(el("p", { class: "form-error" }, error.message));
        }
      }),
    );
    if (!ctx.signal.aborted) updated.textContent = `Limits updated ${formatTime(new Date())}; refreshed every ${REFRESH_MS / 1000} s.`;
  };
  await refresh();
  const timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer));
}

function userKeys(keys) {
  const node = table(
    [
      { label: "Key", value: (k) => el("a", { class: "mono", href: `#/keys?key=${encodeURIComponent(k.id)}` }, k.id) },
      { label: "Name", value: (k) => k.name || "—" },
      { label: "Team", value: (k) => k.team || "—" },
      { label: "Tier", value: (k) => k.tier },
      { label: "Status", value: (k) => keyStatus(k) },
    ],
    keys,
    { caption: `Keys of ${keys.length ? keys[0].user : "this user"}`, empty: "No keys." },
  );
  return stackOnPhone(node);
}

/** The row under a user's that opens to their limits and keys, loaded (and kept live) when open. */
function userDetails(ctx, entry, keys, columns) {
  const details = el("div", { class: "user-details" });
  const row = el("tr", { class: "user-details-row", hidden: true, dataset: { detailsOf: entry.user } }, el("td", { colspan: columns }, details));
  let timer = null;
  const load = async () => {
    try {
      const quota = await ctx.api.get(`/admin/users/${encodeURIComponent(entry.user)}/quota`);
      if (ctx.signal.aborted || row.hidden) return;
      details.replaceChildren(
        el("h3", {}, `Limits of user ${entry.user}`),
        limitList(quota.limits, "No limit of scope user applies to this user."),
        userKeys(keys.filter((k) => k.user === entry.user)),
      );
    } catch (error) {
      if (!ctx.signal.aborted) details.replaceChildren(el("p", { class: "form-error" }, error.message));
    }
  };
  ctx.signal.addEventListener("abort", () => clearInterval(timer));
  return {
    row,
    async show(open) {
      row.hidden = !open;
      clearInterval(timer);
      if (!open) return;
      details.replaceChildren(el("p", { class: "loading" }, "Loading…"));
      await load();
      timer = setInterval(() => {
        if (!document.hidden && !row.hidden) load();
      }, REFRESH_MS);
    },
  };
}

async function renderUsers(container, ctx, since, keys) {
  const [users, usage] = await Promise.all([ctx.api.get("/admin/users"), spendBy(ctx, "user", since)]);
  if (ctx.signal.aborted) return;
  const opened = new Map();
  const toggleFor = (entry) => {
    const button = el(
      "button",
      { type: "button", class: "link-button user-toggle", "aria-expanded": "false", "aria-label": `${entry.user}: show limits and keys` },
      el("span", { class: "chevron", "aria-hidden": "true" }, "▸"),
      el("span", { class: "user-name" }, entry.user),
    );
    button.addEventListener("click", async () => {
      const open = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", String(open));
      button.setAttribute("aria-label", `${entry.user}: ${open ? "hide" : "show"} limits and keys`);
      await opened.get(entry.user).show(open);
    });
    return button;
  };
  const columns = [
    { label: "User", value: toggleFor },
    { label: "Keys", numeric: true, value: (u) => formatNumber(u.keys, { integer: true }) },
    { label: "Teams", value: (u) => (u.teams.length ? u.teams.join(", ") : el("span", { class: "muted" }, "—")) },
    { label: "Spend this month", numeric: true, value: (u) => formatUsd(usage.has(u.user) ? usage.get(u.user).cost_usd : 0) },
    { label: "Requests this month", numeric: true, value: (u) => formatNumber(usage.has(u.user) ? usage.get(u.user).requests : 0, { integer: true }) },
  ];
  const node = stackOnPhone(
    table(columns, users.data, {
      caption: "Users",
      captionHidden: true,
      empty: "No keys yet, so no users.",
      rowAttrs: (u) => ({ dataset: { user: u.user, keys: u.keys, spend: usage.has(u.user) ? usage.get(u.user).cost_usd : 0 } }),
    }),
  );
  // Each user's row is followed by its details row, hidden until the user is opened.
  for (const entry of users.data) {
    const details = userDetails(ctx, entry, keys, columns.length);
    opened.set(entry.user, details);
    const row = [...node.querySelectorAll("tbody tr[data-user]")].find((r) => r.dataset.user === entry.user);
    row.after(details.row);
    details.row.id = `user-details-${opened.size}`;
    row.querySelector(".user-toggle").setAttribute("aria-controls", details.row.id);
  }
  container.append(
    el(
      "section",
      { class: "users-section", "aria-labelledby": "users-title" },
      el("h2", { id: "users-title" }, "Users"),
      el("p", { class: "muted" }, "A user's keys share the limits of scope user (limits[] in the configuration). Open a user for them."),
      node,
    ),
  );
}

export default {
  id: "teams",
  title: "Teams and users",
  async render(container, ctx) {
    const since = monthStart();
    container.dataset.since = since;
    const keys = (await ctx.api.get("/admin/keys")).data;
    if (ctx.signal.aborted) return;
    container.append(
      el(
        "p",
        { class: "muted page-note" },
        `Spend is since ${formatTime(since)} (the start of this month, your time). `,
        ctx.session.role === "team_admin" ? badge(`team ${ctx.session.team} only`, "neutral") : null,
      ),
    );
    await renderTeams(container, ctx, since, keys);
    await renderUsers(container, ctx, since, keys);
  },
};
