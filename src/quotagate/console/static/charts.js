// Charts drawn by hand as inline SVG: no library, nothing fetched. Each chart is a <figure> with
// a caption, an SVG whose aria-label sums it up, a legend, and a visually hidden table of every
// value for screen readers. The SVG is redrawn at the figure's real width (so its text keeps its
// size on a phone), colours come from the stylesheet (classes c0..c8), and every bucket carries a
// <title> with its values, which browsers show on hover.

import { el, formatNumber, svg, uid } from "./ui.js";

const HEIGHT = 190;
const MARGIN = { top: 12, right: 14, bottom: 26, left: 56 };
const COLOURS = 9;

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

/** A "nice" step for four gridlines reaching at least max: 1, 2, 2.5 or 5 times a power of ten. */
function niceStep(max) {
  if (!(max > 0)) return 0.25;
  const raw = max / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= raw) return step * power;
  }
  return 10 * power;
}

function bucketFormatter(buckets) {
  const first = new Date(buckets[0]).getTime();
  const second = buckets.length > 1 ? new Date(buckets[1]).getTime() : first;
  const daily = second - first >= 86_400_000;
  const format = new Intl.DateTimeFormat(
    undefined,
    daily ? { month: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit", hour12: false },
  );
  const long = new Intl.DateTimeFormat(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    hour12: false,
  });
  return { short: (iso) => format.format(new Date(iso)), long: (iso) => (daily ? format : long).format(new Date(iso)) };
}

function total(values) {
  return values.reduce((sum, value) => sum + (Number(value) || 0), 0);
}

/** A one-sentence description of the chart for its aria-label. */
function summary(label, series, buckets, format, times) {
  if (!buckets.length) return `${label}: no data.`;
  const overall = total(series.flatMap((s) => s.values));
  const span = `${times.long(buckets[0])} to ${times.long(buckets[buckets.length - 1])}`;
  if (!overall) return `${label}: none from ${span}.`;
  const ranked = [...series].sort((a, b) => total(b.values) - total(a.values));
  const top = ranked
    .slice(0, 3)
    .filter((s) => total(s.values) > 0)
    .map((s) => `${s.name} ${format(total(s.values))}`)
    .join(", ");
  return `${label}: ${format(overall)} in all from ${span}${series.length > 1 ? `; most: ${top}` : ""}.`;
}

function legend(series) {
  if (series.length < 2 && (!series[0] || series[0].name === "all")) return null;
  return el(
    "ul",
    { class: "legend", "aria-hidden": "true" },
    series.map((s, index) => el("li", {}, el("span", { class: ["swatch", `c${index % COLOURS}`] }), s.name)),
  );
}

function dataTable(label, series, buckets, format, times) {
  // Wrapped: a table grows to its content whatever width it is given, the wrapper does not.
  return el(
    "div",
    { class: "visually-hidden" },
    el(
    "table",
    {},
    el("caption", {}, label),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Time"), series.map((s) => el("th", { scope: "col" }, s.name)))),
    el(
      "tbody",
      {},
      buckets.map((bucket, i) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, times.long(bucket)),
          series.map((s) => el("td", {}, format(Number(s.values[i]) || 0))),
        ),
      ),
    ),
    ),
  );
}

/** The frame shared by both kinds: axes, grid, ticks, hover titles; draws the marks with plot(). */
function frame({ label, series, buckets, format, axisFormat, stacked, plot }) {
  const times = bucketFormatter(buckets.length ? buckets : [new Date().toISOString()]);
  const titleId = uid("chart");
  const figure = el("figure", { class: "chart" });
  const caption = el("figcaption", { id: titleId }, label);
  const overall = total(series.flatMap((s) => s.values));
  figure.dataset.total = String(overall);
  const description = summary(label, series, buckets, format, times);
  let drawnWidth = 0;

  const draw = (width) => {
    width = Math.max(260, Math.round(width / 10) * 10);
    if (width === drawnWidth) return;
    drawnWidth = width;
    const innerW = width - MARGIN.left - MARGIN.right;
    const innerH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const n = buckets.length;
    const peaks = buckets.map((_, i) =>
      stacked ? total(series.map((s) => s.values[i])) : Math.max(0, ...series.map((s) => Number(s.values[i]) || 0)),
    );
    const top = niceStep(Math.max(0, ...peaks)) * 4;
    const slot = n ? innerW / n : innerW;
    const x = (i) => MARGIN.left + slot * i + slot / 2;
    const y = (value) => MARGIN.top + innerH - (value / top) * innerH;

    const root = svg("svg", {
      viewBox: `0 0 ${width} ${HEIGHT}`,
      width: String(width),
      height: String(HEIGHT),
      role: "img",
      "aria-label": description,
      focusable: "false",
    });
    root.append(svg("title", {}, description));
    const axis = svg("g", { class: "axis" });
    for (let t = 0; t <= 4; t += 1) {
      const value = (top * t) / 4;
      const yy = y(value);
      root.append(svg("line", { class: "gridline", x1: MARGIN.left, x2: width - MARGIN.right, y1: yy, y2: yy }));
      axis.append(svg("text", { x: MARGIN.left - 6, y: yy + 4, "text-anchor": "end" }, axisFormat(value, top / 4)));
    }
    const ticks = Math.min(n, Math.max(2, Math.floor(innerW / 90)));
    const every = n > 1 ? Math.max(1, Math.ceil((n - 1) / (ticks - 1))) : 1;
    for (let i = 0; i < n; i += every) {
      // The last label would overflow the right edge; it is labelled from the right instead.
      axis.append(svg("text", { x: x(i), y: HEIGHT - 6, "text-anchor": "middle" }, times.short(buckets[i])));
    }
    root.append(axis);
    root.append(svg("line", { class: "baseline", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(0), y2: y(0) }));
    plot(root, { x, y, slot, n, top });
    // Hover titles, one per bucket, over the whole height of the plot.
    const hits = svg("g", { "aria-hidden": "true" });
    for (let i = 0; i < n; i += 1) {
      const lines = series.map((s) => `${s.name}: ${format(Number(s.values[i]) || 0)}`);
      hits.append(
        svg(
          "rect",
          { class: "hit", x: MARGIN.left + slot * i, y: MARGIN.top, width: slot, height: innerH },
          svg("title", {}, [times.long(buckets[i]), ...lines].join("\n")),
        ),
      );
    }
    root.append(hits);
    if (!overall) {
      root.append(svg("text", { class: "empty-note", x: MARGIN.left + innerW / 2, y: MARGIN.top + innerH / 2, "text-anchor": "middle" }, "No data in this window"));
    }
    const old = figure.querySelector("svg");
    if (old) old.replaceWith(root);
    else caption.after(root);
  };

  figure.append(caption, legend(series), dataTable(label, series, buckets, format, times));
  draw(600);
  if (typeof ResizeObserver === "function") {
    const observer = new ResizeObserver((entries) => {
      const box = entries[0].contentRect;
      if (box.width > 0) draw(box.width);
    });
    observer.observe(figure);
  }
  return figure;
}

function normalise(series) {
  return series.map((s) => ({ name: s.name ?? s.group, values: (s.values || []).map((v) => Number(v) || 0) }));
}

function axisFormatFor(options) {
  return options.axisFormat || ((value) => compact.format(value));
}

/** The decimals that show every multiple of ``step`` exactly (0.025 -> 3), at least ``least``. */
export function stepDecimals(step, least = 0) {
  for (let digits = least; digits < 12; digits += 1) {
    const scaled = step * 10 ** digits;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-6) return digits;
  }
  return 12;
}

/** An axis format for amounts in USD: "$0.025", every tick with the same decimals. */
export function usdAxis(value, step) {
  return `$${value.toFixed(stepDecimals(step, 2))}`;
}

/**
 * A line per series over time.
 * series: [{name, values: number[]}] (values aligned with buckets); buckets: ISO start times;
 * options: {label, format(value) -> text (legend, titles, table), axisFormat(value, step) -> text}.
 */
export function lineChart(series, buckets, options = {}) {
  const data = normalise(series);
  const format = options.format || formatNumber;
  return frame({
    label: options.label || "Chart",
    series: data,
    buckets,
    format,
    axisFormat: axisFormatFor(options),
    stacked: false,
    plot(root, { x, y, n }) {
      data.forEach((s, index) => {
        const colour = `c${index % COLOURS}`;
        if (n === 1) {
          root.append(svg("circle", { class: colour, cx: x(0), cy: y(s.values[0] || 0), r: 3 }));
          return;
        }
        const points = s.values.map((value, i) => `${x(i).toFixed(1)},${y(value).toFixed(1)}`).join(" ");
        root.append(svg("polyline", { class: ["line", colour], points }));
      });
    },
  });
}

/**
 * Stacked columns per bucket (one colour per series): the same arguments as lineChart.
 */
export function barChart(series, buckets, options = {}) {
  const data = normalise(series);
  const format = options.format || formatNumber;
  return frame({
    label: options.label || "Chart",
    series: data,
    buckets,
    format,
    axisFormat: axisFormatFor(options),
    stacked: true,
    plot(root, { x, y, slot, n }) {
      const width = Math.max(1, Math.min(28, slot * 0.7));
      for (let i = 0; i < n; i += 1) {
        let base = 0;
        data.forEach((s, index) => {
          const value = s.values[i] || 0;
          if (value <= 0) return;
          const y0 = y(base);
          const y1 = y(base + value);
          root.append(svg("rect", { class: `c${index % COLOURS}`, x: x(i) - width / 2, y: y1, width, height: Math.max(0.5, y0 - y1) }));
          base += value;
        });
      }
    },
  });
}
