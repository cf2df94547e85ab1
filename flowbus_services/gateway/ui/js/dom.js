// Building pages: elements from data (text is always set as text, never parsed
// as HTML, so nothing a user or a flow wrote can run as script), times in the
// browser's zone with UTC on hover, state badges, and the status line.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

// A <time> in the browser's zone; hovering shows UTC.
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h("span", {}, String(iso));
  const utc = date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  return h("time", { datetime: date.toISOString(), title: utc }, dateTime.format(date));
}

export function duration(start, end) {
  if (!start) return "—";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  if (!(ms >= 0)) return "—";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// The colour family of a state type: its own name for the common ones.
const FAMILY = {
  Success: "success", Cached: "success", Skipped: "success", Mapped: "success", Finished: "success",
  Failed: "failed", TimedOut: "failed", TriggerFailed: "failed", ValidationFailed: "failed",
  Running: "running", Cancelling: "cancelling", Cancelled: "cancelled",
  Scheduled: "scheduled", Retrying: "scheduled", Paused: "scheduled", Resume: "scheduled",
  Submitted: "submitted", Queued: "submitted", Pending: "pending", Looped: "success",
};

export function stateFamily(type) {
  return FAMILY[type] || "pending";
}

export function badge(type, attrs = {}) {
  return h("span", { class: `badge state-${stateFamily(type)}`, ...attrs }, type || "—");
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value ?? null, null, 2));
}

export function table(headers, rows, caption) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "None")))));
}

export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

let toastTimer;
// One polite status line for what a click did ("Run created", an error).
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  replace(el, message);
  el.className = `toast ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; el.replaceChildren(); }, 6000);
}

export function link(href, text, attrs = {}) {
  return h("a", { href, ...attrs }, text);
}

export function labels(list) {
  const items = Array.isArray(list) ? list : [];
  if (!items.length) return h("span", { class: "muted" }, "none");
  return h("span", { class: "labels" }, items.map((l) => h("span", { class: "label" }, l)));
}
