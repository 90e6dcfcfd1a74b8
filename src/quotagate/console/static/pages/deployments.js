// Deployments: each deployment as the router sees it (GET /admin/deployments), refreshed every
// 5 s while the page is shown: breaker state, cooldown and why, error rate, latency, traffic and
// the provider limits' headroom.

import { badge, bar, el, formatDuration, formatNumber, formatPercent, formatTime } from "../ui.js";

const REFRESH_MS = 5000;
const BREAKER = {
  closed: ["closed", "ok"],
  half_open: ["half-open", "warn"],
  open: ["open", "danger"],
};

function latencyText(d) {
  const p = d.latency_percentiles || d.latency_ms_percentiles;
  if (p && (p.p50 != null || p.p95 != null || p.p99 != null)) {
    return ["p50", "p95", "p99"].map((name) => `${name} ${formatDuration(p[name])}`).join(" · ");
  }
  return d.latency_ms == null ? "not measured yet" : `${formatDuration(d.latency_ms)} (moving average)`;
}

function cooldownText(d) {
  const parts = [];
  // A cooldown of a few milliseconds (pacing to a provider limit) is over before anyone reads it.
  if (d.cooldown_seconds_left >= 0.05) parts.push(`cooling down, ${formatDuration(d.cooldown_seconds_left * 1000)} left`);
  if (d.breaker !== "closed" && d.open_seconds_left > 0) {
    parts.push(`breaker ${d.breaker === "open" ? "open" : "half-open"}, ${formatDuration(d.open_seconds_left * 1000)} left`);
  }
  const reason = d.cooldown_reason || d.reason || (d.last_error && (d.last_error.message || d.last_error.type));
  if (reason && parts.length) parts.push(`why: ${reason}`);
  return parts.length ? parts.join("; ") : "none";
}

/**
 * The provider limits' headroom: a meter of what is available now against the most there can be
 * (a limit's burst capacity, else the limit), or just the remaining figure when nothing more is
 * known. GET /admin/deployments gives "remaining" per limit, and "limits" (a number, or
 * {limit, capacity|burst, remaining}) where it has them.
 */
function headroom(d) {
  const remaining = d.remaining || {};
  const limits = d.limits || {};
  const names = [...new Set([...Object.keys(limits), ...Object.keys(remaining)])].sort();
  if (!names.length) return el("p", { class: "muted" }, "No provider limits configured.");
  return el(
    "div",
    { class: "bars", role: "group", "aria-label": `Provider limits of ${d.label || d.id}` },
    names.map((name) => {
      const entry = limits[name];
      const detailed = entry !== null && typeof entry === "object";
      const limit = detailed ? entry.limit : entry;
      const capacity = detailed ? (entry.capacity ?? entry.burst ?? entry.limit) : entry;
      const left = detailed && entry.remaining != null ? entry.remaining : remaining[name];
      const label = name.toUpperCase();
      const integer = (n) => formatNumber(n, { integer: true });
      if (typeof capacity === "number" && typeof left === "number") {
        const per = typeof limit === "number" && limit !== capacity ? ` (${integer(limit)} a minute)` : "";
        return bar(capacity - left, capacity, label, { text: `${integer(left)} of ${integer(capacity)} left${per}` });
      }
      return el(
        "div",
        { class: "bar" },
        el("span", { class: "bar-label" }, label),
        el("span", { class: "bar-text" }, left == null ? "—" : `${integer(left)} left now`),
      );
    }),
  );
}

function row(term, value, name) {
  return [el("dt", {}, term), el("dd", { dataset: { field: name } }, value)];
}

function deploymentCard(d) {
  const [breakerText, breakerKind] = BREAKER[d.breaker] || [d.breaker, "neutral"];
  const errorKind = d.error_rate >= 0.5 ? "danger" : d.error_rate >= 0.1 ? "warn" : "ok";
  return el(
    "article",
    {
      class: ["panel", "dep-card"],
      dataset: { deployment: d.id, model: d.model },
      "aria-label": `Deployment ${d.label || d.id} of model ${d.model}`,
    },
    el("h3", {}, d.label || d.id),
    el("p", { class: "dep-state" }, badge(`breaker ${breakerText}`, breakerKind)),
    el(
      "p",
      { class: "dep-meta" },
      el("span", { class: "mono", dataset: { field: "id" } }, d.id),
      ` · `,
      el("span", { dataset: { field: "provider" } }, d.provider),
      ` · priority ${d.priority} · weight ${d.weight}`,
    ),
    el(
      "dl",
      {},
      row("Error rate", badge(formatPercent(d.error_rate), errorKind), "error_rate"),
      row("Latency", latencyText(d), "latency"),
      row("Requests", `${formatNumber(d.requests, { integer: true })} (${formatNumber(d.failures, { integer: true })} failed)`, "requests"),
      row("In flight", formatNumber(d.in_flight, { integer: true }), "in_flight"),
      row("Cooldown", cooldownText(d), "cooldown"),
    ),
    headroom(d),
  );
}

let timer = null;
let onVisibility = null;

function stop() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  if (onVisibility) document.removeEventListener("visibilitychange", onVisibility);
  onVisibility = null;
}

export default {
  id: "deployments",
  title: "Deployments",
  async render(container, ctx) {
    stop();
    let paused = false;
    const status = el("p", { class: "status-line", id: "deployments-status" });
    const pause = el("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Pause live updates");
    const refresh = el("button", { type: "button", class: "secondary" }, "Refresh now");
    const body = el("div", { class: "deployments-body" });
    container.append(el("div", { class: "toolbar" }, refresh, pause, el("span", { class: "spacer" }), status), body);

    const schedule = () => {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      // Nothing is fetched while paused, hidden (another tab) or after the user left.
      if (!paused && !document.hidden && !ctx.signal.aborted) timer = setTimeout(load, REFRESH_MS);
    };

    let loads = 0;
    async function load() {
      timer = null;
      try {
        const answer = await ctx.api.get("/admin/deployments");
        if (ctx.signal.aborted) return;
        loads += 1;
        container.dataset.loads = String(loads);
        // By model, then as the router ranks them (priority), as the router's routes list them.
        const models = [...new Set(answer.data.map((d) => d.model))];
        const ordered = [...answer.data].sort(
          (a, b) => models.indexOf(a.model) - models.indexOf(b.model) || a.priority - b.priority,
        );
        body.replaceChildren(
          answer.data.length
            ? el("div", { class: "dep-grid" }, ordered.map(deploymentCard))
            : el("p", { class: "muted" }, "No deployments are configured."),
        );
        status.textContent = `Updated ${formatTime(new Date())}${paused ? " · paused" : " · refreshes every 5 s"}`;
      } catch (error) {
        if (ctx.signal.aborted) return;
        status.textContent = `Update failed: ${error.message}. Retrying.`;
      } finally {
        schedule();
      }
    }

    pause.addEventListener("click", () => {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume live updates" : "Pause live updates";
      status.textContent = status.textContent.replace(/ · (paused|refreshes every 5 s)$/, paused ? " · paused" : " · refreshes every 5 s");
      schedule();
    });
    refresh.addEventListener("click", () => load());
    onVisibility = () => {
      if (!document.hidden) load();
      else if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
    };
    document.addEventListener("visibilitychange", onVisibility);
    ctx.signal.addEventListener("abort", stop);
    await load();
  },
  dispose: stop,
};
