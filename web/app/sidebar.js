// The left sidebar: brand, search box, rooms and DMs (unread badges, previews, presence),
// create room / start DM / browse public rooms, the notifications prompt, the admin panel and
// the signed-in user with the logout button.

import { compareIds } from "/sdk/confab.js";
import { h, icon, iconButton, avatar, formatShortDate, errorText } from "./dom.js";
import { openDialog } from "./dialog.js";
import { adminSettings, setRegistration, createInvite } from "./session.js";

export function previewText(store, m) {
  if (!m) return "No messages yet";
  const dm = store.rooms.get(m.room_id)?.room.kind === "dm";
  const who = m.sender_id === store.me.id ? "You" : store.nameOf(m.sender_id);
  if (dm && m.sender_id !== store.me.id && m.type === "text" && !m.deleted_at) return m.content.replace(/\s+/g, " ");
  if (m.deleted_at) return `${who}: message deleted`;
  if (m.type === "system") return m.content;
  if (m.type === "image") return `${who}: Photo · ${m.content || m.file?.name || "image"}`;
  if (m.type === "file") return `${who}: File · ${m.content || m.file?.name || "file"}`;
  return `${who}: ${m.content.replace(/\s+/g, " ")}`;
}

export function presenceDot(status, testid = "presence-dot") {
  const online = status === "online";
  return h("span", {
    class: ["presence-dot", online ? "online" : "offline"], testid, role: "img",
    "aria-label": online ? "Online" : "Offline", title: online ? "Online" : "Offline",
  });
}

export function createSidebar({ store, openRoom, onLogout, notifyPrompt, searchBox, serverName, getToken }) {
  const items = new Map(); // roomId → li
  let current = null;

  const roomsList = h("ul", { class: "room-ul", role: "list", "aria-label": "Rooms" });
  const dmList = h("ul", { class: "room-ul", role: "list", "aria-label": "Direct messages" });
  const roomsEmpty = h("p", { class: "section-empty" }, "No rooms yet. Create one or browse public rooms.");
  const dmEmpty = h("p", { class: "section-empty" }, "No conversations yet.");

  const nav = h("nav", { class: "room-list", testid: "room-list", "aria-label": "Rooms and direct messages" },
    h("section", { class: "room-section", "aria-labelledby": "sec-rooms" },
      h("div", { class: "section-head" },
        h("h2", { id: "sec-rooms", class: "section-title" }, "Rooms"),
        iconButton("compass", "Browse public rooms", { testid: "browse-rooms", on: { click: browseRooms } }),
        iconButton("plus", "Create a room", { testid: "new-room", on: { click: newRoom } })),
      roomsList, roomsEmpty),
    h("section", { class: "room-section", "aria-labelledby": "sec-dms" },
      h("div", { class: "section-head" },
        h("h2", { id: "sec-dms", class: "section-title" }, "Direct messages"),
        iconButton("plus", "Start a direct message", { testid: "new-dm", on: { click: newDm } })),
      dmList, dmEmpty));

  const loading = h("div", { class: "sidebar-loading", role: "status" }, h("span", { class: "spinner" }), "Loading rooms…");

  const me = store.me;
  const userName = h("span", { class: "me-name" }, me.name || me.id);
  const footer = h("footer", { class: "sidebar-foot" },
    h("span", { class: "me-avatar" }, avatar(me.id, me.name), h("span", { class: "presence-dot online", "aria-hidden": "true" })),
    h("span", { class: "me-text" }, userName, h("span", { class: "me-id" }, `@${me.id}`)),
    iconButton("logout", "Log out", { testid: "logout", on: { click: onLogout } }));

  const adminSlot = h("div", { class: "admin-slot" });
  const promptSlot = h("div", { class: "prompt-slot" });
  const scroll = h("div", { class: "sidebar-scroll" }, loading, nav, promptSlot, adminSlot);
  nav.hidden = true;

  const el = h("aside", { class: "sidebar", "aria-label": "Sidebar" },
    h("header", { class: "sidebar-head" },
      h("span", { class: "brand-mark sm", "aria-hidden": "true" }, icon("chat", 16)),
      h("span", { class: "brand-name" }, serverName)),
    searchBox.el,
    searchBox.results,
    scroll,
    footer);

  const p = notifyPrompt();
  if (p) promptSlot.append(p);

  // ---- items -----------------------------------------------------------------------------

  function renderItem(roomId) {
    const r = store.rooms.get(roomId);
    if (!r) return null;
    let li = items.get(roomId);
    if (!li) {
      li = h("li", { class: "room-li" });
      items.set(roomId, li);
    }
    const isDm = r.room.kind === "dm";
    const name = store.roomName(roomId);
    const lead = isDm
      ? h("span", { class: "room-avatar" }, avatar(r.otherId || roomId, name, "sm"),
        r.otherId ? presenceDot(store.users.get(r.otherId)?.presence) : null)
      : h("span", { class: "room-glyph" }, icon(r.room.visibility === "private" ? "lock" : "hash", 16));
    const unread = r.unread > 0;
    const btn = h("button", {
      type: "button",
      class: ["room-item", unread && "has-unread", current === roomId && "is-current"],
      testid: "room-item",
      dataset: { roomId },
      "aria-current": current === roomId ? "true" : null,
      on: { click: () => openRoom(roomId) },
    },
    lead,
    h("span", { class: "room-main" },
      h("span", { class: "room-row" },
        h("span", { class: "room-name", testid: "room-name" }, name),
        r.last ? h("span", { class: "room-time" }, formatShortDate(r.last.created_at)) : null),
      h("span", { class: "room-preview", testid: "room-preview" }, previewText(store, r.last))),
    unread ? h("span", { class: "badge", testid: "room-unread", "aria-label": `${r.unread} unread` }, r.unread > 99 ? "99+" : String(r.unread)) : null);
    li.replaceChildren(btn);
    return li;
  }

  function activity(r) {
    return r.last ? r.last.id : null;
  }

  function renderAll() {
    const rooms = [];
    const dms = [];
    for (const [id, r] of store.rooms) (r.room.kind === "dm" ? dms : rooms).push(id);
    rooms.sort((a, b) => store.roomName(a).localeCompare(store.roomName(b), undefined, { sensitivity: "base" }));
    dms.sort((a, b) => {
      const x = activity(store.rooms.get(a));
      const y = activity(store.rooms.get(b));
      if (x && y) return compareIds(y, x);
      if (x) return -1;
      if (y) return 1;
      return store.roomName(a).localeCompare(store.roomName(b));
    });
    for (const id of [...items.keys()]) if (!store.rooms.has(id)) items.delete(id);
    const focused = document.activeElement;
    roomsList.replaceChildren(...rooms.map(renderItem));
    dmList.replaceChildren(...dms.map(renderItem));
    if (focused && !focused.isConnected && focused.dataset?.roomId) {
      items.get(focused.dataset.roomId)?.querySelector("button")?.focus();
    }
    roomsEmpty.hidden = rooms.length > 0;
    dmEmpty.hidden = dms.length > 0;
    if (store.loadedRooms) {
      loading.remove();
      nav.hidden = false;
    }
  }

  function update(roomId) {
    const r = store.rooms.get(roomId);
    if (!r) return;
    const li = items.get(roomId);
    if (!li || !li.isConnected) return renderAll();
    const wasFocused = li.contains(document.activeElement);
    // DMs move with activity: re-sort them when the newest message changes.
    const before = li.dataset.activity;
    const now = activity(r) || "";
    renderItem(roomId);
    li.dataset.activity = now;
    if (r.room.kind === "dm" && before !== undefined && before !== now) renderAll();
    if (wasFocused) li.querySelector("button")?.focus();
  }

  store.on("rooms", renderAll);
  store.on("room", update);
  store.on("user", (userId) => {
    for (const [id, r] of store.rooms) if (r.otherId === userId || r.last?.sender_id === userId) update(id);
  });

  function setCurrent(roomId) {
    const prev = current;
    current = roomId;
    if (prev) update(prev);
    if (roomId) update(roomId);
  }

  // ---- dialogs ---------------------------------------------------------------------------

  function newRoom() {
    const name = h("input", { class: "input", testid: "new-room-name", id: "nr-name", maxlength: "80", required: true, autocomplete: "off", placeholder: "e.g. design" });
    const topic = h("input", { class: "input", id: "nr-topic", maxlength: "500", autocomplete: "off", placeholder: "What's it about? (optional)" });
    const vis = h("select", { class: "input", testid: "new-room-visibility", id: "nr-vis" },
      h("option", { value: "public" }, "Public — anyone can find and join"),
      h("option", { value: "private" }, "Private — invite only"));
    const submit = h("button", { type: "submit", class: "btn primary", testid: "new-room-submit", form: "nr-form" }, "Create room");
    const form = h("form", { id: "nr-form", class: "form", novalidate: true },
      h("div", { class: "field" }, h("label", { class: "field-label", for: "nr-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { class: "field-label", for: "nr-topic" }, "Topic"), topic),
      h("div", { class: "field" }, h("label", { class: "field-label", for: "nr-vis" }, "Visibility"), vis));
    const d = openDialog({
      title: "Create a room", body: form,
      actions: [h("button", { type: "button", class: "btn", on: { click: () => d.close() } }, "Cancel"), submit],
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const n = name.value.trim();
      if (!n) return d.setError("Give the room a name.");
      submit.disabled = true;
      try {
        const room = await store.client.createRoom({ name: n, topic: topic.value.trim() || undefined, visibility: vis.value });
        store.addRoom(room);
        d.close();
        openRoom(room.id);
      } catch (err) {
        d.setError(errorText(err));
      } finally {
        submit.disabled = false;
      }
    });
  }

  function newDm() {
    const user = h("input", { class: "input", testid: "new-dm-user", id: "dm-user", required: true, autocomplete: "off", autocapitalize: "none", spellcheck: "false", placeholder: "username" });
    const submit = h("button", { type: "submit", class: "btn primary", testid: "new-dm-submit", form: "dm-form" }, "Start conversation");
    const form = h("form", { id: "dm-form", class: "form", novalidate: true },
      h("div", { class: "field" }, h("label", { class: "field-label", for: "dm-user" }, "User id"), user,
        h("span", { class: "field-hint" }, "Their username, e.g. ana")));
    const d = openDialog({
      title: "Direct message", body: form,
      actions: [h("button", { type: "button", class: "btn", on: { click: () => d.close() } }, "Cancel"), submit],
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const id = user.value.trim().replace(/^@/, "");
      if (!id) return d.setError("Enter a user id.");
      if (id === store.me.id || id.toLowerCase() === store.me.id) return d.setError("That's you — pick someone else.");
      submit.disabled = true;
      try {
        let room;
        try {
          room = await store.client.openDm(id);
        } catch (err) {
          // Built-in usernames are lowercase; host-app ids may not be.
          if (err.code !== "not_found" || id.toLowerCase() === id) throw err;
          room = await store.client.openDm(id.toLowerCase());
        }
        store.addRoom(room);
        d.close();
        openRoom(room.id);
      } catch (err) {
        d.setError(err.code === "not_found" ? `There is no user "${id}".` : errorText(err));
      } finally {
        submit.disabled = false;
      }
    });
  }

  function browseRooms() {
    const filter = h("input", { class: "input", type: "search", "aria-label": "Filter rooms", placeholder: "Filter rooms", autocomplete: "off" });
    const list = h("ul", { class: "public-list", role: "list", "aria-label": "Public rooms" },
      h("li", { class: "muted pad" }, h("span", { class: "spinner" }), " Loading…"));
    const d = openDialog({ title: "Browse public rooms", body: [filter, list], className: "dialog-lg" });
    let all = [];
    function render() {
      const q = filter.value.trim().toLowerCase();
      const shown = all.filter((r) => !q || r.name.toLowerCase().includes(q) || (r.topic || "").toLowerCase().includes(q));
      if (!shown.length) {
        list.replaceChildren(h("li", { class: "empty-row" }, all.length ? "No rooms match." : "There are no public rooms yet."));
        return;
      }
      list.replaceChildren(...shown.map((room) => {
        const joined = store.rooms.has(room.id);
        const btn = h("button", {
          type: "button", class: ["btn sm", joined ? "" : "primary"], testid: "join-room",
          "aria-label": `${joined ? "Open" : "Join"} ${room.name}`,
          on: {
            click: async () => {
              btn.disabled = true;
              try {
                if (!store.rooms.has(room.id)) store.addRoom(await store.client.joinRoom(room.id));
                d.close();
                openRoom(room.id);
              } catch (err) {
                d.setError(errorText(err));
                btn.disabled = false;
              }
            },
          },
        }, joined ? "Open" : "Join");
        return h("li", { class: "public-room", testid: "public-room", dataset: { roomId: room.id } },
          h("span", { class: "room-glyph" }, icon("hash", 16)),
          h("span", { class: "public-main" },
            h("span", { class: "public-name" }, room.name),
            h("span", { class: "public-topic" }, room.topic || "No topic"),
            h("span", { class: "public-meta" }, `${room.member_count} member${room.member_count === 1 ? "" : "s"}${joined ? " · joined" : ""}`)),
          btn);
      }));
    }
    filter.addEventListener("input", render);
    store.client.listPublicRooms().then((rooms) => {
      all = rooms.sort((a, b) => a.name.localeCompare(b.name));
      render();
    }, (err) => {
      list.replaceChildren(h("li", { class: "empty-row" }, errorText(err)));
    });
  }

  // ---- admin -----------------------------------------------------------------------------

  function showAdmin() {
    const mode = h("select", { class: "input sm", testid: "registration-mode", id: "adm-reg", "aria-label": "Registration mode" },
      h("option", { value: "open" }, "Open to anyone"),
      h("option", { value: "invite" }, "Invite only"));
    const status = h("span", { class: "admin-status", role: "status" });
    const url = h("code", { class: "invite-url", testid: "invite-url" });
    const copy = h("button", {
      type: "button", class: "btn sm", on: {
        click: async () => {
          try {
            await navigator.clipboard.writeText(url.textContent);
            copy.textContent = "Copied";
          } catch {
            const range = document.createRange();
            range.selectNodeContents(url);
            const sel = getSelection();
            sel.removeAllRanges();
            sel.addRange(range);
            copy.textContent = "Press Ctrl+C";
          }
          setTimeout(() => { copy.textContent = "Copy"; }, 2000);
        },
      },
    }, "Copy");
    const out = h("div", { class: "invite-out", hidden: true }, url, copy,
      h("span", { class: "field-hint" }, "Single use, valid for 7 days."));
    const create = h("button", {
      type: "button", class: "btn sm block", testid: "create-invite",
      on: {
        click: async () => {
          create.disabled = true;
          status.textContent = "";
          try {
            const ans = await createInvite(getToken(), {});
            url.textContent = new URL(ans.invite.url, location.origin).href;
            out.hidden = false;
          } catch (err) {
            status.textContent = errorText(err);
          } finally {
            create.disabled = false;
          }
        },
      },
    }, icon("userplus", 16), "Create invite link");
    mode.addEventListener("change", async () => {
      status.textContent = "Saving…";
      try {
        const ans = await setRegistration(getToken(), mode.value);
        mode.value = ans.registration;
        status.textContent = "Saved";
        setTimeout(() => { if (status.textContent === "Saved") status.textContent = ""; }, 1500);
      } catch (err) {
        status.textContent = errorText(err);
      }
    });
    const panel = h("section", { class: "admin-panel", testid: "admin-panel", "aria-labelledby": "adm-title" },
      h("h2", { class: "section-title", id: "adm-title" }, icon("shield", 14), "Administration"),
      h("div", { class: "admin-row" }, h("label", { for: "adm-reg", class: "admin-label" }, "Registration"), mode),
      status,
      create,
      out);
    adminSlot.replaceChildren(panel);
    adminSettings(getToken()).then((s) => {
      if (s.registration === "closed") {
        mode.append(h("option", { value: "closed" }, "Closed (set in config)"));
        mode.disabled = true;
      }
      mode.value = s.registration;
    }, () => {});
  }

  return { el, setCurrent, renderAll, showAdmin };
}
