// DOM helpers. Everything dynamic goes through textContent / createTextNode / setAttribute:
// this UI never uses innerHTML (user text must always render as text).

const PROPS = new Set(["value", "checked", "disabled", "hidden", "selected", "multiple", "required", "autofocus", "readOnly", "tabIndex"]);

/**
 * h("button", {class: "x", testid: "send", on: {click: fn}, "aria-label": "Send"}, "text", child)
 * Strings become text nodes; null/false/undefined children are skipped; arrays are flattened.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) applyProps(el, props);
  append(el, children);
  return el;
}

export function applyProps(el, props) {
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = Array.isArray(v) ? v.filter(Boolean).join(" ") : v;
    else if (k === "text") el.textContent = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return el;
}

/** Replaces every child of `el`. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

// ---- icons: static SVG path data, built with DOM APIs ----------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const ICONS = {
  hash: ["M5 9h14M5 15h14M10 4 8 20M16 4l-2 16"],
  lock: ["M6 11h12v9H6z", "M8.5 11V8a3.5 3.5 0 0 1 7 0v3"],
  plus: ["M12 5v14M5 12h14"],
  search: ["M11 4a7 7 0 1 0 0 14 7 7 0 0 0 0-14z", "m20 20-4-4"],
  x: ["M6 6l12 12M18 6 6 18"],
  send: ["M4 12 20 4l-6 16-3-7z", "M11 13l9-9"],
  clip: ["M20 11.5 12.5 19a5 5 0 0 1-7-7L13 4.5a3.3 3.3 0 0 1 4.7 4.7l-7.4 7.4a1.7 1.7 0 0 1-2.4-2.4L15 7.1"],
  edit: ["M4 20h4L19 9l-4-4L4 16z", "M13.5 6.5l4 4"],
  trash: ["M5 7h14", "M10 7V5h4v2", "M7 7l1 13h8l1-13"],
  logout: ["M15 4h4v16h-4", "M10 8l-4 4 4 4", "M6 12h10"],
  back: ["M15 5l-7 7 7 7"],
  compass: ["M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z", "m15.5 8.5-2 5-5 2 2-5z"],
  users: ["M9 11a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7z", "M2.5 20a6.5 6.5 0 0 1 13 0", "M16 4.2a3.5 3.5 0 0 1 0 6.6", "M18 14a6.5 6.5 0 0 1 3.5 6"],
  userplus: ["M9 11a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7z", "M2.5 20a6.5 6.5 0 0 1 13 0", "M19 8v6M16 11h6"],
  message: ["M4 5h16v11H9l-5 4z"],
  file: ["M6 3h8l5 5v13H6z", "M14 3v5h5"],
  download: ["M12 4v11", "m7 10 5 5 5-5", "M5 20h14"],
  bell: ["M6 16V11a6 6 0 0 1 12 0v5l2 2H4z", "M10 20a2 2 0 0 0 4 0"],
  arrowdown: ["M12 5v14", "m6 13 6 6 6-6"],
  leave: ["M14 4h-8v16h8", "M17 8l4 4-4 4", "M21 12H10"],
  shield: ["M12 3l8 3v6c0 4.5-3.4 8.2-8 9-4.6-.8-8-4.5-8-9V6z"],
  copy: ["M9 9h11v11H9z", "M5 15H4V4h11v1"],
  upload: ["M12 20V8", "m7 13 5-5 5 5", "M5 4h14"],
  chat: ["M4 5h16v11H9l-5 4z", "M8 9h8M8 12h5"],
};

/** An inline SVG icon (decorative: aria-hidden). */
export function icon(name, size = 18) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "1.8");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.classList.add("icon");
  for (const d of ICONS[name] || []) {
    const p = document.createElementNS(SVG, "path");
    p.setAttribute("d", d);
    svg.append(p);
  }
  return svg;
}

/** An icon-only button with an accessible name. */
export function iconButton(name, label, props = {}) {
  const { class: cls, ...rest } = props;
  return h("button", { type: "button", class: ["icon-btn", cls], "aria-label": label, title: label, ...rest }, icon(name));
}

// ---- avatars ---------------------------------------------------------------------------------

const HUES = [211, 262, 330, 14, 32, 150, 174, 190, 286, 350, 95, 236];

function hash(s) {
  let x = 2166136261;
  for (let i = 0; i < s.length; i++) {
    x ^= s.charCodeAt(i);
    x = Math.imul(x, 16777619);
  }
  return x >>> 0;
}

export function initials(name) {
  const words = String(name || "?").trim().split(/[\s._-]+/).filter(Boolean);
  if (!words.length) return "?";
  const first = [...words[0]][0] || "?";
  const second = words.length > 1 ? [...words[words.length - 1]][0] : "";
  return (first + (second || "")).toUpperCase();
}

export function avatar(userId, name, size = "md") {
  const el = h("span", { class: `avatar avatar-${size}`, "aria-hidden": "true" }, initials(name || userId));
  el.style.setProperty("--avatar-hue", String(HUES[hash(String(userId)) % HUES.length]));
  return el;
}

// ---- formatting ------------------------------------------------------------------------------

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayYearFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });
const shortFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const shortYearFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", year: "numeric" });

export const formatTime = (ms) => timeFmt.format(ms);
/** The time without its day period ("12:08"), for the narrow gutter of grouped messages. */
export const formatClock = (ms) => timeFmt.formatToParts(ms).filter((p) => p.type !== "dayPeriod").map((p) => p.value).join("").trim();
export const formatFull = (ms) => fullFmt.format(ms);

export function dayKey(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function formatDay(ms) {
  const d = new Date(ms);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(ms) === dayKey(today.getTime())) return "Today";
  if (dayKey(ms) === dayKey(yesterday.getTime())) return "Yesterday";
  return d.getFullYear() === today.getFullYear() ? dayFmt.format(d) : dayYearFmt.format(d);
}

/** Short date for lists: a time today, else "Nov 3" (with the year when not this year). */
export function formatShortDate(ms) {
  const d = new Date(ms);
  const now = new Date();
  if (dayKey(ms) === dayKey(now.getTime())) return timeFmt.format(d);
  return d.getFullYear() === now.getFullYear() ? shortFmt.format(d) : shortYearFmt.format(d);
}

export function formatSize(bytes) {
  if (!Number.isFinite(bytes)) return "";
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = bytes / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function formatAgo(ms, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return "just now";
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const hrs = Math.round(m / 60);
  if (hrs < 24) return `${hrs} h ago`;
  const d = Math.round(hrs / 24);
  if (d < 7) return `${d} d ago`;
  return formatShortDate(ms);
}

/** "Ana", "Ana and Bo", "Ana, Bo and Cy", "Ana, Bo and 3 others". */
export function joinNames(names) {
  if (names.length <= 1) return names[0] || "";
  if (names.length === 2) return `${names[0]} and ${names[1]}`;
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]}`;
  return `${names[0]}, ${names[1]} and ${names.length - 2} others`;
}

// ---- links -----------------------------------------------------------------------------------

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

function trimUrl(raw) {
  let url = raw;
  // Trailing punctuation is usually the sentence, not the link; keep balanced parentheses.
  for (;;) {
    const last = url[url.length - 1];
    if (/[.,;:!?'"*]/.test(last)) url = url.slice(0, -1);
    else if (last === ")" && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) url = url.slice(0, -1);
    else if (last === "]" && !url.includes("[")) url = url.slice(0, -1);
    else break;
  }
  return url;
}

/** Text with http(s) URLs turned into <a> elements, as a DocumentFragment (no HTML parsing). */
export function linkify(text) {
  const frag = document.createDocumentFragment();
  let pos = 0;
  for (const m of String(text).matchAll(URL_RE)) {
    const url = trimUrl(m[0]);
    let href = null;
    try {
      const u = new URL(url);
      if (u.protocol === "http:" || u.protocol === "https:") href = u.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    if (m.index > pos) frag.append(document.createTextNode(text.slice(pos, m.index)));
    frag.append(h("a", { href, target: "_blank", rel: "noopener noreferrer" }, url));
    pos = m.index + url.length;
  }
  if (pos < text.length) frag.append(document.createTextNode(text.slice(pos)));
  return frag;
}

/** Debounce: the last call wins after `ms` quiet. */
export function debounce(fn, ms) {
  let t = null;
  const d = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => {
      t = null;
      fn(...args);
    }, ms);
  };
  d.cancel = () => clearTimeout(t);
  return d;
}

/** Whether the user can see the page right now (visible and focused). */
export function attentive() {
  return document.visibilityState === "visible" && document.hasFocus();
}

/** Runs async `fn` over `items` with at most `n` at a time. */
export async function pool(items, n, fn) {
  const queue = [...items];
  const workers = Array.from({ length: Math.min(n, queue.length) }, async () => {
    while (queue.length) {
      const it = queue.shift();
      try {
        await fn(it);
      } catch {
        // one failure does not stop the others
      }
    }
  });
  await Promise.all(workers);
}

export function errorText(err) {
  if (!err) return "Something went wrong.";
  switch (err.code) {
    case "network": return "Can't reach the server. Check your connection and try again.";
    case "timeout": return "The server took too long to answer. Try again.";
    case "rate_limited": return "Slow down a little — too many requests. Try again in a moment.";
    case "too_large": return "That's too large.";
    case "quota_exceeded": return "Your upload quota is full.";
    case "insufficient_storage": return "The server is out of disk space.";
    default: return err.message || "Something went wrong.";
  }
}
