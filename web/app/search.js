// Message search: a box at the top of the sidebar, results (room, sender, date, snippet with
// the matched ranges as <mark>) replacing the room list while a query is active.

import { h, icon, iconButton, debounce, formatShortDate, formatFull, errorText } from "./dom.js";

/** The snippet with `highlights` ([start, end) UTF-16 offsets) as <mark> elements. */
export function snippetNodes(snippet, highlights) {
  const text = String(snippet || "");
  const ranges = (Array.isArray(highlights) ? highlights : [])
    .filter((r) => Array.isArray(r) && Number.isInteger(r[0]) && Number.isInteger(r[1]))
    .map(([s, e]) => [Math.max(0, s), Math.min(text.length, e)])
    .filter(([s, e]) => e > s)
    .sort((a, b) => a[0] - b[0]);
  const out = [];
  let pos = 0;
  for (const [s, e] of ranges) {
    if (e <= pos) continue;
    const start = Math.max(s, pos);
    if (start > pos) out.push(document.createTextNode(text.slice(pos, start)));
    out.push(h("mark", null, text.slice(start, e)));
    pos = e;
  }
  if (pos < text.length) out.push(document.createTextNode(text.slice(pos)));
  return out;
}

export function createSearch({ store, openResult, onActive }) {
  const input = h("input", {
    type: "search", class: "search-input", testid: "search-input", placeholder: "Search messages",
    "aria-label": "Search messages", autocomplete: "off", spellcheck: "false", enterkeyhint: "search",
  });
  const clear = iconButton("x", "Clear search", { class: "search-clear", hidden: true, on: { click: () => reset(true) } });
  const el = h("div", { class: "search-box", role: "search" },
    h("span", { class: "search-icon" }, icon("search", 16)), input, clear);

  const title = h("h2", { class: "section-title" }, "Results");
  const status = h("p", { class: "search-status", role: "status" });
  const list = h("ul", { class: "search-list", role: "list", "aria-label": "Search results" });
  const more = h("button", { type: "button", class: "btn sm block", hidden: true, on: { click: () => run(true) } }, "Show more results");
  const results = h("section", { class: "search-results", testid: "search-results", hidden: true, "aria-label": "Search results" },
    h("div", { class: "section-head" }, title, iconButton("x", "Close search", { on: { click: () => reset(true) } })),
    status, list, more);

  let seq = 0;
  let cursor = null;
  let query = "";
  let active = false;

  function setActive(on) {
    if (on === active) return;
    active = on;
    results.hidden = !on;
    clear.hidden = !on && !input.value;
    onActive?.(on);
  }

  function reset(focus) {
    seq++;
    input.value = "";
    query = "";
    cursor = null;
    list.replaceChildren();
    status.textContent = "";
    more.hidden = true;
    clear.hidden = true;
    setActive(false);
    if (focus) input.focus();
  }

  function roomLabel(hit) {
    const id = hit.room?.id || hit.message.room_id;
    if (store.rooms.has(id)) {
      const r = store.rooms.get(id);
      return r.room.kind === "dm" ? store.roomName(id) : `#${r.room.name}`;
    }
    return hit.room?.kind === "dm" ? "Direct message" : `#${hit.room?.name || "room"}`;
  }

  function item(hit) {
    const m = hit.message;
    const btn = h("button", {
      type: "button", class: "search-result", testid: "search-result",
      dataset: { messageId: m.id, roomId: m.room_id },
      on: { click: () => openResult(m.room_id, m.id) },
    },
    h("span", { class: "result-head" },
      h("span", { class: "result-room" }, roomLabel(hit)),
      h("span", { class: "result-sender" }, store.nameOf(m.sender_id)),
      h("time", { class: "result-date", datetime: new Date(m.created_at).toISOString(), title: formatFull(m.created_at) }, formatShortDate(m.created_at))),
    h("span", { class: "search-snippet", testid: "search-snippet" }, snippetNodes(hit.snippet, hit.highlights)));
    return h("li", null, btn);
  }

  async function run(next = false) {
    const q = next ? query : input.value.trim();
    if (!q) {
      reset(false);
      return;
    }
    const mine = ++seq;
    query = q;
    setActive(true);
    title.textContent = `Results for “${q.length > 40 ? `${q.slice(0, 40)}…` : q}”`;
    if (!next) {
      cursor = null;
      list.replaceChildren();
    }
    status.textContent = "Searching…";
    more.hidden = true;
    try {
      const ans = await store.client.search(q.slice(0, 256), { limit: 20, cursor: next ? cursor : undefined });
      if (mine !== seq) return;
      cursor = ans.next_cursor;
      list.append(...ans.hits.map(item));
      const n = list.children.length;
      status.textContent = n ? `${n}${cursor ? "+" : ""} result${n === 1 ? "" : "s"}` : "No messages match.";
      more.hidden = !cursor;
    } catch (err) {
      if (mine !== seq) return;
      status.textContent = err.code === "invalid_payload" ? "Try fewer or shorter words." : errorText(err);
    }
  }

  const later = debounce(() => run(false), 300);
  input.addEventListener("input", () => {
    clear.hidden = !input.value;
    if (!input.value.trim()) {
      later.cancel();
      reset(false);
      return;
    }
    later();
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      later.cancel();
      run(false);
    } else if (ev.key === "Escape") {
      ev.preventDefault();
      later.cancel();
      reset(false);
    }
  });

  return { el, results, focus: () => input.focus(), reset };
}
