// Small DOM helpers shared by every page. Data reaches the page only as text (textContent and
// attributes), never as HTML, so nothing a key name or an error message holds can run.

/**
 * el("button", {type: "button", class: "primary", onclick: fn}, "Save")
 * Attributes: "class", "dataset" (an object), "style" (an object of CSSOM properties), "on<event>" (a listener), booleans (true sets the
 * attribute, false/null/undefined leaves it out); children: strings, numbers, nodes, arrays, null.
 */
export function el(tag, attrs = {}, ...children) {
  const node = tag.includes(":")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.split(":")[1])
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "dataset") {
      for (const [key, data] of Object.entries(value)) {
        if (data !== undefined && data !== null) node.dataset[key] = String(data);
      }
    } else if (name === "style") {
      // Through the CSSOM: a style="" attribute is inline style, which a strict CSP refuses.
      Object.assign(node.style, value);
    } else if (name === "class") {
      node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (name === "value" && "value" in node && !(node instanceof SVGElement)) {
      node.value = String(value);
    } else if (name === "checked" || name === "selected") {
      node[name] = Boolean(value);
      if (value) node.setAttribute(name, "");
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

/** An SVG element (el with the SVG namespace). */
export function svg(tag, attrs = {}, ...children) {
  return el(`svg:${tag}`, attrs, ...children);
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Removes every child of a node. */
export function clear(node) {
  node.replaceChildren();
  return node;
}

let idCounter = 0;
/** An id unique in the document, for label/aria wiring. */
export function uid(prefix = "qg") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/**
 * A table inside a horizontally scrolling, focusable region (so a phone scrolls the table, not
 * the page). columns: [{label, value(row) -> string|Node, numeric?, className?}];
 * options: {caption, captionHidden, empty, rowAttrs(row) -> attrs}.
 */
export function table(columns, rows, options = {}) {
  const caption = options.caption || "";
  const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.numeric ? "num" : c.className }, c.label))));
  const body = el("tbody");
  if (!rows.length) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: columns.length }, options.empty || "Nothing to show.")));
  }
  for (const row of rows) {
    const attrs = options.rowAttrs ? options.rowAttrs(row) : {};
    body.append(
      el(
        "tr",
        attrs,
        columns.map((c, index) => {
          const value = c.value(row);
          const cell = index === 0 && options.rowHeaders ? "th" : "td";
          return el(cell, { class: [c.numeric ? "num" : null, c.className], scope: cell === "th" ? "row" : null }, value ?? "");
        }),
      ),
    );
  }
  const tableNode = el("table", {}, caption ? el("caption", { class: options.captionHidden ? "visually-hidden" : null }, caption) : null, head, body);
  // A focusable region so that keyboard users can scroll a wide table sideways.
  return el("div", { class: "table-wrap", role: "region", "aria-label": caption || "Table", tabindex: "0" }, tableNode);
}

/**
 * A horizontal meter of use against a limit, with its figures as text next to it.
 * bar(used, limit, label, {format, text}) -> <div class="bar">; the fill turns amber at 80 %
 * and red at 100 %.
 */
export function bar(used, limit, label, options = {}) {
  const format = options.format || formatNumber;
  const fraction = limit > 0 ? Math.min(1, Math.max(0, used / limit)) : 0;
  const level = fraction >= 1 ? "full" : fraction >= 0.8 ? "high" : "ok";
  const text = options.text || `${format(used)} of ${format(limit)}`;
  return el(
    "div",
    { class: ["bar", `bar-${level}`] },
    el("span", { class: "bar-label" }, label),
    el(
      "div",
      {
        class: "bar-track",
        role: "meter",
        "aria-label": label,
        "aria-valuemin": "0",
        "aria-valuemax": String(limit),
        "aria-valuenow": String(Math.min(used, limit)),
        "aria-valuetext": text,
      },
      el("div", { class: "bar-fill", style: { width: `${(fraction * 100).toFixed(1)}%` } }),
    ),
    el("span", { class: "bar-text" }, text),
  );
}

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const integerFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** 1234567 -> "1,234,567" (the browser's locale); null/undefined -> "—". */
export function formatNumber(value, { integer = false } = {}) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return (integer ? integerFormat : numberFormat).format(value);
}

/**
 * USD with cents; an amount under a cent with two significant digits, as a request often costs
 * ($0.000054), never rounded to a misleading $0.00.
 */
export function formatUsd(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const small = value !== 0 && Math.abs(value) < 0.01;
  return new Intl.NumberFormat(undefined, {
    style: "currency",
    currency: "USD",
    ...(small
      ? { minimumSignificantDigits: 1, maximumSignificantDigits: 2 }
      : { minimumFractionDigits: 2, maximumFractionDigits: Math.abs(value) < 1 && value !== 0 ? 4 : 2 }),
  }).format(value);
}

/** 0.4567 -> "45.7 %". */
export function formatPercent(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return `${(value * 100).toFixed(1)} %`;
}

/**
 * An ISO time (or Date) as the user's local date and time to the second, "2026-05-12 14:03:09":
 * unambiguous in every locale, and it sorts.
 */
export function formatTime(value) {
  if (!value) return "—";
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** Milliseconds as "840 ms", "2.4 s", "3 min 5 s", "2 h 10 min". */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/**
 * A short message in the toast region (role=status, read out by screen readers), gone after a
 * few seconds. kind: "info" | "success" | "error" (errors stay until dismissed or replaced).
 */
export function toast(message, kind = "info") {
  let region = document.getElementById("toasts");
  if (!region) {
    region = el("div", { id: "toasts", class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(region);
  }
  const close = el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
  const item = el("div", { class: ["toast", `toast-${kind}`] }, el("span", {}, message), close);
  close.addEventListener("click", () => item.remove());
  region.append(item);
  if (kind !== "error") setTimeout(() => item.remove(), 5000);
  return item;
}

/**
 * Asks a yes/no question in a modal <dialog>; resolves true when confirmed. Focus starts on
 * Cancel (the safe choice) and returns to where it was when the dialog closes; Escape cancels.
 * options: {title, confirmLabel, danger}.
 */
export function confirmDialog(message, options = {}) {
  const previous = document.activeElement;
  const titleId = uid("dialog-title");
  const cancel = el("button", { type: "button", class: "secondary" }, "Cancel");
  const confirm = el(
    "button",
    { type: "button", class: options.danger ? "danger" : "primary" },
    options.confirmLabel || "Confirm",
  );
  const dialog = el(
    "dialog",
    { class: "dialog", "aria-labelledby": titleId },
    el("h2", { id: titleId }, options.title || "Are you sure?"),
    typeof message === "string" ? el("p", {}, message) : message,
    el("div", { class: "dialog-actions" }, cancel, confirm),
  );
  document.body.append(dialog);
  return new Promise((resolve) => {
    let answer = false;
    cancel.addEventListener("click", () => dialog.close());
    confirm.addEventListener("click", () => {
      answer = true;
      dialog.close();
    });
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (previous && typeof previous.focus === "function") previous.focus();
      resolve(answer);
    });
    dialog.showModal();
    cancel.focus();
  });
}

/** A labelled form field: field("Model", el("select", ...)) -> <div class="field"><label>…</div>. */
export function field(label, control, hint) {
  if (!control.id) control.id = uid("field");
  const hintNode = hint ? el("span", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintNode) control.setAttribute("aria-describedby", hintNode.id);
  return el("div", { class: "field" }, el("label", { for: control.id }, label), control, hintNode);
}

/** A <select> of [value, label] pairs (or plain strings) with one selected. */
export function select(options, selected, attrs = {}) {
  return el(
    "select",
    attrs,
    options.map((option) => {
      const [value, label] = Array.isArray(option) ? option : [option, option];
      return el("option", { value, selected: String(value) === String(selected) }, label);
    }),
  );
}

/** A page's error box (role=alert) for a failed load. */
export function errorBox(error) {
  return el("div", { class: "error-box", role: "alert" }, el("strong", {}, "Could not load: "), error.message || String(error));
}

/** A status pill, e.g. badge("open", "danger"). */
export function badge(text, kind = "neutral") {
  return el("span", { class: ["badge", `badge-${kind}`] }, text);
}
