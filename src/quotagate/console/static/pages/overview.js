// Overview: requests, tokens, spend and errors over the last hour, day or 30 days, split by a
// group (GET /admin/usage/series), the window's totals, and the top groups (GET /admin/usage).

import { ApiError } from "../api.js";
import { barChart, lineChart, usdAxis } from "../charts.js";
import { el, field, formatNumber, formatPercent, formatTime, formatUsd, select, table } from "../ui.js";

const WINDOWS = [
  ["hour", "Last hour"],
  ["day", "Last 24 hours"],
  ["month", "Last 30 days"],
];
const GROUPS = [
  ["model", "Model"],
  ["deployment", "Deployment"],
  ["tier", "Tier"],
  ["user", "User"],
  ["team", "Team"],
];

function pick(value, choices, fallback) {
  return choices.some(([v]) => v === value) ? value : fallback;
}

function card(label, text, name, value) {
  return el("div", { class: "card", dataset: { card: name } }, el("dt", {}, label), el("dd", { dataset: { value } }, text));
}

function totalsCards(totals) {
  const errorShare = totals.requests ? totals.errors / totals.requests : 0;
  return el(
    "dl",
    { class: "cards", "aria-label": "Totals for the window" },
    card("Requests", formatNumber(totals.requests, { integer: true }), "requests", totals.requests),
    card("Tokens", formatNumber(totals.tokens, { integer: true }), "tokens", totals.tokens),
    card("Spend", formatUsd(totals.cost_usd), "cost_usd", totals.cost_usd),
    card("Errors", `${formatNumber(totals.errors, { integer: true })} (${formatPercent(errorShare)})`, "errors", totals.errors),
    card("Cache hit rate", formatPercent(totals.hit_rate), "hit_rate", totals.hit_rate),
    card("Cache savings", formatUsd(totals.saved_usd), "saved_usd", totals.saved_usd),
  );
}

function charts(series, buckets, unit) {
  const pickValues = (name) => series.map((s) => ({ name: s.group, values: s[name] }));
  return el(
    "div",
    { class: "charts" },
    lineChart(pickValues("requests"), buckets, { label: `Requests per ${unit}` }),
    lineChart(pickValues("tokens"), buckets, { label: `Tokens per ${unit}` }),
    lineChart(pickValues("cost_usd"), buckets, {
      label: `Spend per ${unit} (USD)`,
      format: formatUsd,
      axisFormat: usdAxis,
    }),
    barChart(pickValues("errors"), buckets, { label: `Errors per ${unit}` }),
  );
}

/** The top groups from GET /admin/usage, or from the series when the report cannot group so. */
async function topRows(ctx, by, since, series) {
  try {
    const report = await ctx.api.get("/admin/usage", { by, since });
    return {
      full: true,
      rows: report.data
        .map((row) => ({ ...row, group: row[by], tokens: (row.prompt_tokens || 0) + (row.completion_tokens || 0) }))
        .sort((a, b) => b.requests - a.requests || String(a.group).localeCompare(String(b.group))),
    };
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 400) throw error;
    // /admin/usage has no such grouping: the series' sums are the next best thing.
    const sum = (values) => values.reduce((a, b) => a + b, 0);
    return {
      full: false,
      rows: series
        .map((s) => ({
          group: s.group,
          requests: sum(s.requests),
          errors: sum(s.errors),
          tokens: sum(s.tokens),
          cost_usd: sum(s.cost_usd),
        }))
        .sort((a, b) => b.requests - a.requests),
    };
  }
}

function topTable(groupLabel, top) {
  const columns = [
    { label: groupLabel, value: (r) => String(r.group) },
    { label: "Requests", numeric: true, value: (r) => formatNumber(r.requests, { integer: true }) },
    { label: "Errors", numeric: true, value: (r) => formatNumber(r.errors, { integer: true }) },
    { label: "Tokens", numeric: true, value: (r) => formatNumber(r.tokens, { integer: true }) },
    { label: "Spend", numeric: true, value: (r) => formatUsd(r.cost_usd) },
  ];
  if (top.full) {
    columns.push(
      { label: "Cache hits", numeric: true, value: (r) => formatNumber(r.cache_hits, { integer: true }) },
      { label: "Hit rate", numeric: true, value: (r) => formatPercent(r.hit_rate) },
      { label: "Saved", numeric: true, value: (r) => formatUsd(r.saved_usd) },
    );
  }
  return table(columns, top.rows, {
    caption: `Top by ${groupLabel.toLowerCase()}`,
    captionHidden: true,
    rowHeaders: true,
    empty: "No requests in this window.",
    rowAttrs: (r) => ({ dataset: { group: r.group } }),
  });
}

export default {
  id: "overview",
  title: "Overview",
  async render(container, ctx) {
    let span = pick(ctx.params.get("window"), WINDOWS, "day");
    let by = pick(ctx.params.get("by"), GROUPS, "model");
    const windowSelect = select(WINDOWS, span, { name: "window" });
    const bySelect = select(GROUPS, by, { name: "by" });
    const refresh = el("button", { type: "button", class: "secondary" }, "Refresh");
    const status = el("p", { class: "status-line", "aria-live": "polite" });
    const body = el("div", { class: "overview-body" });
    container.append(
      el(
        "div",
        { class: "toolbar", role: "group", "aria-label": "Overview options" },
        field("Window", windowSelect),
        field("Group by", bySelect),
        refresh,
        el("span", { class: "spacer" }),
        status,
      ),
      body,
    );

    let generation = 0;
    const load = async () => {
      generation += 1;
      const mine = generation;
      ctx.setParams({ window: span, by });
      status.textContent = "Loading…";
      container.setAttribute("aria-busy", "true");
      try {
        const data = await ctx.api.get("/admin/usage/series", { window: span, by });
        const groupLabel = GROUPS.find(([v]) => v === by)[1];
        const top = await topRows(ctx, by, data.buckets[0], data.series);
        if (mine !== generation || ctx.signal.aborted) return;
        const unit = span === "hour" ? "minute" : span === "day" ? bucketUnit(data.buckets) : "day";
        body.replaceChildren(
          totalsCards(data.totals),
          charts(data.series, data.buckets, unit),
          el("h2", {}, `Top by ${groupLabel.toLowerCase()}`),
          topTable(groupLabel, top),
          ...(top.full ? [] : [el("p", { class: "muted" }, "Cache figures per group are not available for this grouping.")]),
        );
        status.textContent = `Updated ${formatTime(new Date())}`;
      } catch (error) {
        if (mine !== generation || ctx.signal.aborted) return;
        status.textContent = "";
        body.replaceChildren(el("div", { class: "error-box", role: "alert" }, `Could not load usage: ${error.message}`));
      } finally {
        if (mine === generation) container.removeAttribute("aria-busy");
      }
    };

    windowSelect.addEventListener("change", () => {
      span = windowSelect.value;
      load();
    });
    bySelect.addEventListener("change", () => {
      by = bySelect.value;
      load();
    });
    refresh.addEventListener("click", () => load());
    await load();
  },
};

/** "hour" or "15 minutes": the day window's buckets are either. */
function bucketUnit(buckets) {
  if (buckets.length < 2) return "hour";
  const minutes = Math.round((new Date(buckets[1]) - new Date(buckets[0])) / 60000);
  return minutes >= 60 ? "hour" : `${minutes} minutes`;
}
