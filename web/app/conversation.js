// The open conversation: header (title, topic or presence, members, invite, leave), the
// message list (infinite scroll both ways, grouping by sender and day, new-messages marker,
// jump to latest, read marking, receipts, inline edit, delete), typing indicator, composer.

import { compareIds } from "/sdk/confab.js";
import {
  h, icon, iconButton, avatar, linkify, formatTime, formatClock, formatFull, formatDay, dayKey, formatAgo,
  joinNames, debounce, attentive, errorText,
} from "./dom.js";
import { openDialog, confirmDialog } from "./dialog.js";
import { renderAttachment, enableDrop } from "./files.js";
import { createComposer } from "./composer.js";
import { presenceDot } from "./sidebar.js";

const GROUP_MS = 5 * 60 * 1000;

export function createConversation({ store, onBack, onLeft }) {
  const client = store.client;
  const me = store.me;

  // ---- static structure ------------------------------------------------------------------

  const back = iconButton("back", "Back to rooms", { class: "back-btn", on: { click: () => onBack() } });
  const titleGlyph = h("span", { class: "title-glyph" });
  const title = h("span", { class: "room-title", testid: "room-title" });
  const sub = h("p", { class: "conv-sub" });
  const membersBtn = h("button", { type: "button", class: "btn ghost sm members-btn", on: { click: showMembers } });
  const inviteBtn = iconButton("userplus", "Invite someone to this room", { testid: "invite-member", on: { click: inviteMember } });
  const leaveBtn = iconButton("leave", "Leave this room", { on: { click: leaveRoom } });
  const header = h("header", { class: "conv-head" },
    back,
    h("div", { class: "conv-heading" }, h("h1", { class: "conv-title" }, titleGlyph, title), sub),
    h("div", { class: "conv-actions" }, membersBtn, inviteBtn, leaveBtn));

  const listTop = h("div", { class: "list-top" });
  const list = h("div", {
    class: "message-list", testid: "message-list", role: "log", "aria-label": "Messages", tabindex: "0",
    "aria-live": "polite", "aria-relevant": "additions",
  });
  const jumpCount = h("span", { class: "jump-count" });
  const jump = h("button", { type: "button", class: "jump-latest", testid: "jump-latest", hidden: true, on: { click: jumpToLatest } },
    icon("arrowdown", 16), h("span", null, "Jump to latest"), jumpCount);
  const body = h("div", { class: "conv-body" }, list, jump);
  const typingEl = h("div", { class: "typing-indicator", testid: "typing-indicator", "aria-live": "polite" });
  const composer = createComposer({ client, getRoomId: () => roomId, onSent: (id) => onOwnSend(id) });
  const main = h("div", { class: "conv-main", hidden: true }, header, body, typingEl, composer.el);
  const empty = h("div", { class: "conv-empty" },
    h("div", { class: "empty-art", "aria-hidden": "true" }, icon("chat", 40)),
    h("h2", null, "Pick a conversation"),
    h("p", null, "Choose a room or a direct message on the left, or start a new one."));
  const el = h("main", { class: "conversation", "aria-label": "Conversation" }, empty, main);
  enableDrop(body, (files) => roomId && composer.addFiles(files));

  // ---- state -----------------------------------------------------------------------------

  let roomId = null;
  let openSeq = 0;
  let conv = null;
  let markerId = null;
  let highlightId = null;
  let editingId = null;
  let loadingOlder = false;
  let loadingNewer = false;
  let newBelow = 0;
  let scheduled = null; // pending render flags
  const msgEls = new Map();
  const sigs = new Map();
  const pendEls = new Map();
  const dayEls = new Map();
  const askedReceipts = new Set();
  const noReaders = new Set();
  const marker = h("div", { class: "new-marker", testid: "new-messages-marker", role: "separator", "aria-label": "New messages" },
    h("span", null, "New messages"));

  // ---- header ----------------------------------------------------------------------------

  function renderHeader() {
    const r = store.rooms.get(roomId);
    if (!r) return;
    const isDm = r.room.kind === "dm";
    title.textContent = store.roomName(roomId);
    titleGlyph.replaceChildren(isDm
      ? h("span", { class: "room-avatar" }, avatar(r.otherId || roomId, store.roomName(roomId), "sm"),
        r.otherId ? presenceDot(store.users.get(r.otherId)?.presence, null) : null)
      : icon(r.room.visibility === "private" ? "lock" : "hash", 18));
    if (isDm) {
      const u = r.otherId ? store.users.get(r.otherId) : null;
      sub.textContent = !u?.presence ? (r.otherId ? `@${r.otherId}` : "")
        : u.presence === "online" ? "Online"
          : u.last_seen ? `Last seen ${formatAgo(u.last_seen)}` : "Offline";
      sub.classList.toggle("online", u?.presence === "online");
    } else {
      sub.textContent = r.room.topic || (r.room.visibility === "private" ? "Private room" : "Public room");
      sub.classList.remove("online");
    }
    const n = r.room.member_count;
    membersBtn.replaceChildren(icon("users", 16), h("span", null, n != null ? String(n) : ""));
    membersBtn.setAttribute("aria-label", n != null ? `${n} member${n === 1 ? "" : "s"}` : "Members");
    membersBtn.title = "Members";
    inviteBtn.hidden = isDm;
    leaveBtn.hidden = isDm;
  }

  // ---- messages --------------------------------------------------------------------------

  function statusInfo(m) {
    const st = store.statusOf(roomId, m);
    const r = store.rooms.get(roomId);
    const group = r && r.room.kind !== "dm";
    const readers = group ? store.readersOf(roomId, m).map((u) => store.nameOf(u)) : [];
    if (st === "read") {
      if (!group) return { text: "Read", label: "Read", cls: "read" };
      if (!readers.length) return { text: "Read", label: "Read by everyone", cls: "read", ask: true };
      const shown = readers.length > 3 ? `${readers.slice(0, 3).join(", ")} +${readers.length - 3}` : readers.join(", ");
      return { text: `Read by ${shown}`, label: `Read by ${readers.join(", ")}`, cls: "read" };
    }
    if (st === "delivered") {
      return { text: "✓✓", label: readers.length ? `Delivered · read by ${readers.join(", ")}` : "Delivered", cls: "delivered" };
    }
    return { text: "✓", label: "Sent", cls: "sent" };
  }

  function updateStatus(el, m) {
    const s = el.querySelector(":scope > .msg-aside > .msg-status");
    if (!s) return null;
    const info = statusInfo(m);
    if (s.textContent !== info.text) s.textContent = info.text;
    s.className = `msg-status ${info.cls}`;
    s.title = info.label;
    s.setAttribute("aria-label", info.label);
    return info;
  }

  function signature(m) {
    return `${m.edited_at || ""}|${m.deleted_at || ""}|${m.content}|${store.nameOf(m.sender_id)}|${m.file?.id || ""}`;
  }

  function buildMessage(m) {
    const own = m.sender_id === me.id;
    const name = store.nameOf(m.sender_id);
    const when = new Date(m.created_at);
    const el = h("div", {
      class: ["msg", own && "own", m.deleted_at && "deleted", m.type === "system" && "system"],
      testid: "message", dataset: { messageId: m.id, senderId: m.sender_id },
    });
    if (m.type === "system") {
      el.append(h("div", { class: "msg-system" }, h("span", { class: "msg-text", testid: "message-text" }, m.content),
        h("time", { class: "msg-time", datetime: when.toISOString(), title: formatFull(m.created_at) }, formatTime(m.created_at))));
      return el;
    }
    const text = h("span", { class: "msg-text", testid: "message-text" });
    if (!m.deleted_at) text.append(linkify(m.content));
    const content = h("div", { class: "msg-content" },
      h("div", { class: "msg-head" },
        h("span", { class: "msg-author" }, name),
        h("time", { class: "msg-time", datetime: when.toISOString(), title: formatFull(m.created_at) }, formatTime(m.created_at))),
      h("div", { class: "msg-line" }, text,
        m.edited_at && !m.deleted_at ? h("span", { class: "msg-edited", title: `Edited ${formatFull(m.edited_at)}` }, " (edited)") : null),
      m.deleted_at ? h("div", { class: "msg-tombstone" }, "This message was deleted.") : null,
      renderAttachment(client, m));
    el.append(
      h("div", { class: "msg-gutter" }, avatar(m.sender_id, name),
        h("time", { class: "msg-time-side", datetime: when.toISOString(), title: formatFull(m.created_at), "aria-hidden": "true" }, formatClock(m.created_at))),
      content,
      h("div", { class: "msg-aside" }, own && !m.deleted_at ? h("span", { class: "msg-status", testid: "message-status" }) : null));
    if (own && !m.deleted_at) {
      const actions = h("div", { class: "msg-actions", role: "toolbar", "aria-label": "Message actions" },
        m.type === "text" ? iconButton("edit", "Edit message", { testid: "message-edit", on: { click: () => startEdit(m.id) } }) : null,
        iconButton("trash", "Delete message", { testid: "message-delete", on: { click: () => deleteMessage(m.id) } }));
      el.append(actions);
    }
    return el;
  }

  function messageEl(m) {
    let el = msgEls.get(m.id);
    const sig = signature(m);
    if (el && (sigs.get(m.id) === sig || editingId === m.id)) return el;
    const fresh = buildMessage(m);
    if (el) el.replaceWith(fresh);
    msgEls.set(m.id, fresh);
    sigs.set(m.id, sig);
    return fresh;
  }

  function pendingEl(p) {
    let el = pendEls.get(p.client_msg_id);
    const failed = p.status === "failed";
    if (el && el.dataset.status === p.status) return el;
    const status = h("span", { class: ["msg-status", failed && "failed"] }, failed ? "Not sent" : "Sending…");
    const actions = failed
      ? h("div", { class: "pending-actions" },
        h("span", { class: "pending-error" }, errorText(p.error)),
        h("button", {
          type: "button", class: "link-btn", on: {
            click: () => {
              const c = store.convs.get(p.room_id);
              c?.pendings.delete(p.client_msg_id);
              client.sendMessage(p.room_id, p.content, { type: p.type, fileId: p.file_id ?? undefined }).catch(() => {});
              schedule({ bottom: true });
            },
          },
        }, "Retry"),
        h("button", {
          type: "button", class: "link-btn", on: {
            click: () => {
              store.convs.get(p.room_id)?.pendings.delete(p.client_msg_id);
              schedule({});
            },
          },
        }, "Discard"))
      : null;
    const text = h("div", { class: "msg-text" });
    text.append(linkify(p.content || (p.type === "text" ? "" : "Attachment")));
    const fresh = h("div", { class: ["msg", "own", "pending", failed && "failed"], dataset: { clientMsgId: p.client_msg_id, status: p.status } },
      h("div", { class: "msg-gutter" }, avatar(me.id, me.name)),
      h("div", { class: "msg-content" },
        h("div", { class: "msg-head" }, h("span", { class: "msg-author" }, me.name || me.id)),
        text, actions),
      h("div", { class: "msg-aside" }, status));
    if (el) el.replaceWith(fresh);
    pendEls.set(p.client_msg_id, fresh);
    return fresh;
  }

  function dayEl(ms) {
    const key = dayKey(ms);
    let el = dayEls.get(key);
    const label = formatDay(ms);
    if (!el) {
      el = h("div", { class: "day-sep", testid: "day-separator", role: "separator" }, h("span", null, label));
      dayEls.set(key, el);
    } else if (el.firstChild.textContent !== label) {
      el.firstChild.textContent = label;
    }
    el.setAttribute("aria-label", label);
    return el;
  }

  function renderListTop() {
    const r = store.rooms.get(roomId);
    if (!conv || !r) {
      listTop.replaceChildren();
      return;
    }
    if (conv.hasMoreBefore) {
      listTop.replaceChildren(h("div", { class: ["list-loading", loadingOlder && "on"] }, h("span", { class: "spinner" }), "Loading older messages…"));
      return;
    }
    const isDm = r.room.kind === "dm";
    const name = store.roomName(roomId);
    const noMessages = conv.order.length === 0 && conv.pendings.size === 0;
    listTop.replaceChildren(h("div", { class: "intro" },
      h("div", { class: "intro-art", "aria-hidden": "true" }, isDm ? avatar(r.otherId || roomId, name, "lg") : icon("hash", 28)),
      h("h2", { class: "intro-title" }, isDm ? name : `Welcome to #${name}`),
      h("p", { class: "intro-text" }, isDm
        ? `This is the beginning of your conversation with ${name}.`
        : `This is the very beginning of #${name}.${r.room.topic ? ` ${r.room.topic}` : ""}`),
      noMessages ? h("p", { class: "intro-empty" }, "No messages yet — say hi!") : null));
  }

  function firstVisible() {
    const top = list.getBoundingClientRect().top;
    for (const id of conv.order) {
      const el = msgEls.get(id);
      if (!el || !el.isConnected) continue;
      const r = el.getBoundingClientRect();
      if (r.bottom > top) return { el, offset: r.top - top };
    }
    return null;
  }

  function nearBottom(px = 80) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < px;
  }

  function scrollToBottom() {
    list.scrollTop = list.scrollHeight;
  }

  function schedule(flags) {
    if (!scheduled) {
      scheduled = {};
      queueMicrotask(() => {
        const f = scheduled;
        scheduled = null;
        render(f);
      });
    }
    Object.assign(scheduled, flags);
  }

  function render(flags = {}) {
    if (!conv || !roomId) return;
    const wasBottom = nearBottom();
    const anchor = flags.reset ? null : firstVisible();
    const nodes = [listTop];
    renderListTop();
    let prev = null;
    let prevDay = null;
    for (const id of conv.order) {
      const m = conv.msgs.get(id);
      const d = dayKey(m.created_at);
      if (d !== prevDay) {
        nodes.push(dayEl(m.created_at));
        prevDay = d;
        prev = null;
      }
      if (markerId && id === markerId) {
        nodes.push(marker);
        prev = null;
      }
      const el = messageEl(m);
      const cont = prev && prev.sender_id === m.sender_id && prev.type !== "system" && m.type !== "system"
        && m.created_at - prev.created_at < GROUP_MS;
      el.classList.toggle("cont", !!cont);
      el.classList.toggle("flash", highlightId === id);
      if (m.sender_id === me.id) {
        const info = updateStatus(el, m);
        if (info?.ask) askReceipts(m.id);
      }
      nodes.push(el);
      prev = m;
    }
    if (conv.atLatest) {
      const pend = [...conv.pendings.values()].filter((p) => !p.room_id || p.room_id === roomId)
        .sort((a, b) => a.created_at - b.created_at);
      const today = dayKey(Date.now());
      if (pend.length && prevDay !== today) nodes.push(dayEl(Date.now()));
      for (const p of pend) {
        const el = pendingEl(p);
        el.classList.toggle("cont", !!(prev && prev.sender_id === me.id));
        prev = { sender_id: me.id, type: "text", created_at: Date.now() };
        nodes.push(el);
      }
      for (const k of [...pendEls.keys()]) if (!conv.pendings.has(k)) pendEls.delete(k);
    }
    // Reconcile the children with `nodes`, moving existing elements rather than rebuilding.
    for (let i = 0; i < nodes.length; i++) {
      const cur = list.children[i];
      if (cur !== nodes[i]) list.insertBefore(nodes[i], cur || null);
    }
    while (list.children.length > nodes.length) list.lastElementChild.remove();
    for (const [id, el] of msgEls) {
      if (!el.isConnected) {
        msgEls.delete(id);
        sigs.delete(id);
      }
    }

    // Scroll position.
    if (flags.focusId && msgEls.get(flags.focusId)) {
      const el = msgEls.get(flags.focusId);
      list.scrollTop = Math.max(0, el.offsetTop - list.clientHeight / 2 + el.offsetHeight / 2);
    } else if (flags.reset) {
      if (markerId && marker.isConnected && marker.offsetTop < list.scrollHeight - list.clientHeight) {
        list.scrollTop = Math.max(0, marker.offsetTop - 48);
      } else {
        scrollToBottom();
      }
    } else if (flags.bottom || (wasBottom && conv.atLatest && !flags.older)) {
      scrollToBottom();
    } else if (anchor && anchor.el.isConnected) {
      const delta = anchor.el.getBoundingClientRect().top - list.getBoundingClientRect().top - anchor.offset;
      if (delta) list.scrollTop += delta;
    }
    if (nearBottom() && conv.atLatest) newBelow = 0;
    updateJump();
    markReadSoon();
    // Fill the viewport / keep paging if the user sits at an edge.
    requestAnimationFrame(onScroll);
  }

  function askReceipts(messageId) {
    if (askedReceipts.has(messageId) || noReaders.has(roomId)) return;
    // One request at a time per room: the newest read message answers for the older ones.
    const rid = roomId;
    const newestAsk = [...conv.order].reverse().find((id) => {
      const m = conv.msgs.get(id);
      return m.sender_id === me.id && !m.deleted_at && statusInfo(m).ask;
    });
    const target = newestAsk && !askedReceipts.has(newestAsk) ? newestAsk : messageId;
    askedReceipts.add(target);
    client.messageReceipts(rid, target).then((ans) => {
      const users = (ans.read?.users || []).map((u) => u.user_id);
      if (users.length) store.noteReadBy(rid, target, users);
      else noReaders.add(rid); // everyone keeps receipts private: "Read" is all we can say
    }, () => {});
  }

  function updateJump() {
    const show = !!conv && (!conv.atLatest || !nearBottom(300));
    jump.hidden = !show;
    jumpCount.textContent = newBelow > 0 ? String(newBelow > 99 ? "99+" : newBelow) : "";
    jumpCount.hidden = !(newBelow > 0);
  }

  async function jumpToLatest() {
    if (!conv) return;
    newBelow = 0;
    if (!conv.atLatest) {
      const seq = openSeq;
      await store.loadLatest(roomId).catch(() => {});
      if (seq !== openSeq) return;
    }
    highlightId = null;
    render({ bottom: true });
    list.focus({ preventScroll: true });
  }

  // ---- paging ----------------------------------------------------------------------------

  async function onScroll() {
    if (!conv || !conv.loaded || !roomId) return;
    updateJump();
    if (nearBottom() && conv.atLatest && newBelow) {
      newBelow = 0;
      updateJump();
    }
    markReadSoon();
    const seq = openSeq;
    if (list.scrollTop < 400 && conv.hasMoreBefore && !loadingOlder && conv.order.length) {
      loadingOlder = true;
      renderListTop();
      try {
        await store.loadOlder(roomId);
      } catch {
        // retried at the next scroll
      } finally {
        if (seq === openSeq) {
          loadingOlder = false;
          schedule({ older: true });
        }
      }
    }
    if (seq === openSeq && !conv.atLatest && !loadingNewer && nearBottom(400)) {
      loadingNewer = true;
      try {
        await store.loadNewer(roomId);
      } catch {
        // retried at the next scroll
      } finally {
        if (seq === openSeq) loadingNewer = false;
      }
    }
  }
  list.addEventListener("scroll", onScroll, { passive: true });

  // ---- read marking ----------------------------------------------------------------------

  const markReadSoon = debounce(() => {
    if (!conv || !roomId || !conv.loaded || !attentive() || main.hidden || !list.offsetParent) return;
    const box = list.getBoundingClientRect();
    for (let i = conv.order.length - 1; i >= 0; i--) {
      const id = conv.order[i];
      const el = msgEls.get(id);
      if (!el) continue;
      const r = el.getBoundingClientRect();
      if (r.top < box.bottom - 4 && r.bottom > box.top) {
        store.markRead(roomId, id);
        return;
      }
      if (r.bottom <= box.top) return;
    }
  }, 120);
  document.addEventListener("visibilitychange", () => markReadSoon());
  window.addEventListener("focus", () => markReadSoon());
  window.addEventListener("resize", () => { if (conv) updateJump(); });

  // ---- store events ----------------------------------------------------------------------

  store.on("conv", (ev) => {
    if (ev.roomId !== roomId || !conv) return;
    if (ev.type === "message" && ev.kind === "new" && !ev.own) {
      const m = conv.msgs.get(ev.id);
      if (!conv.atLatest) {
        newBelow++;
      } else if (m && !(attentive() && nearBottom())) {
        if (!markerId && compareIds(m.id, store.rooms.get(roomId)?.readUpTo || "0") > 0) markerId = m.id;
        if (!nearBottom()) newBelow++;
      }
    }
    if (ev.type === "message" && ev.own && ev.kind === "new") return schedule({ bottom: true });
    if (ev.type === "pending" && ev.status === "sending") return schedule({ bottom: true });
    if (ev.type === "reset") return schedule({ reset: true });
    if (ev.type === "older") return schedule({ older: true });
    schedule({});
  });
  store.on("receipts", (id) => { if (id === roomId) schedule({}); });
  store.on("members", (id) => {
    if (id !== roomId) return;
    renderHeader();
    schedule({});
  });
  store.on("typing", (id) => { if (id === roomId) renderTyping(); });
  store.on("room", (id) => { if (id === roomId) renderHeader(); });
  store.on("user", (uid) => {
    const r = roomId && store.rooms.get(roomId);
    if (r && (r.otherId === uid || store.members.get(roomId)?.has(uid))) {
      renderHeader();
      schedule({});
    }
  });
  store.on("room_removed", (id) => {
    if (id === roomId) {
      close();
      onLeft?.(id);
    }
  });

  function renderTyping() {
    const names = store.typists(roomId).map((u) => store.nameOf(u));
    if (!names.length) {
      typingEl.replaceChildren();
      return;
    }
    const verb = names.length === 1 ? "is" : "are";
    typingEl.replaceChildren(
      h("span", { class: "typing-dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")),
      h("span", { class: "typing-text" }, `${joinNames(names)} ${verb} typing…`));
  }

  // ---- actions ---------------------------------------------------------------------------

  function onOwnSend(id) {
    if (id !== roomId || !conv) return;
    markerId = null;
    newBelow = 0;
    if (!conv.atLatest) {
      jumpToLatest();
    } else {
      schedule({ bottom: true });
    }
  }

  function startEdit(id) {
    const m = conv?.msgs.get(id);
    const el = msgEls.get(id);
    if (!m || !el || m.deleted_at) return;
    if (editingId && editingId !== id) cancelEdit();
    editingId = id;
    el.classList.add("editing");
    const text = el.querySelector(".msg-text");
    const ta = h("textarea", { class: "edit-input", testid: "edit-input", "aria-label": "Edit message", rows: "1" });
    ta.value = m.content;
    const err = h("span", { class: "edit-error", role: "alert" });
    const save = h("button", { type: "button", class: "btn primary sm", on: { click: () => commit() } }, "Save");
    const cancel = h("button", { type: "button", class: "btn sm", on: { click: () => cancelEdit() } }, "Cancel");
    const box = h("div", { class: "edit-box" }, ta,
      h("div", { class: "edit-bar" },
        h("span", { class: "edit-hint" }, "Escape to cancel · Enter to save"), err, cancel, save));
    text.hidden = true;
    text.after(box);
    const fit = () => {
      ta.style.height = "auto";
      ta.style.height = `${Math.min(ta.scrollHeight + 2, 300)}px`;
    };
    ta.addEventListener("input", fit);
    ta.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") {
        ev.preventDefault();
        ev.stopPropagation();
        cancelEdit();
      } else if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        commit();
      }
    });
    requestAnimationFrame(fit);
    ta.focus();
    ta.setSelectionRange(ta.value.length, ta.value.length);

    async function commit() {
      const content = ta.value;
      if (!content.trim()) {
        err.textContent = "A message can't be empty — delete it instead.";
        return;
      }
      if (content === m.content) return cancelEdit();
      save.disabled = true;
      try {
        const updated = await client.editMessage(roomId, id, content);
        if (editingId === id) editingId = null;
        conv?.merge([updated]);
        schedule({});
      } catch (e) {
        save.disabled = false;
        err.textContent = errorText(e);
      }
    }
  }

  function cancelEdit() {
    const id = editingId;
    editingId = null;
    if (!id) return;
    const el = msgEls.get(id);
    if (el) {
      el.classList.remove("editing");
      el.querySelector(".edit-box")?.remove();
      const text = el.querySelector(".msg-text");
      if (text) text.hidden = false;
      sigs.delete(id); // rebuild with the newest version
      el.querySelector(".msg-actions button")?.focus();
    }
    schedule({});
  }

  async function deleteMessage(id) {
    const ok = await confirmDialog({
      title: "Delete message?", message: "This message will be deleted for everyone. This can't be undone.",
      confirmLabel: "Delete", danger: true, testid: "confirm-delete",
    });
    if (!ok) return;
    try {
      const m = await client.deleteMessage(roomId, id);
      conv?.merge([m]);
      schedule({});
    } catch (err) {
      if (err.code !== "not_found") alertDialog(errorText(err));
    }
  }

  function alertDialog(text) {
    const d = openDialog({
      title: "Something went wrong", body: h("p", null, text), className: "dialog-sm",
      actions: h("button", { type: "button", class: "btn primary", on: { click: () => d.close() } }, "OK"),
    });
  }

  function showMembers() {
    const ul = h("ul", { class: "member-list", role: "list" });
    const d = openDialog({ title: `Members of ${store.roomName(roomId)}`, body: ul, className: "dialog-md" });
    const render = () => {
      const map = store.members.get(roomId);
      if (!map) {
        ul.replaceChildren(h("li", { class: "muted pad" }, "Loading…"));
        return;
      }
      const members = [...map.values()].sort((a, b) => (a.presence === "online" ? 0 : 1) - (b.presence === "online" ? 0 : 1) || a.name.localeCompare(b.name));
      ul.replaceChildren(...members.map((m) => h("li", { class: "member" },
        h("span", { class: "room-avatar" }, avatar(m.user_id, m.name), presenceDot(store.users.get(m.user_id)?.presence || m.presence, null)),
        h("span", { class: "member-main" },
          h("span", { class: "member-name" }, m.name || m.user_id, m.user_id === me.id ? h("span", { class: "muted" }, " (you)") : null),
          h("span", { class: "member-id" }, `@${m.user_id}`)),
        m.role !== "member" ? h("span", { class: "role-tag" }, m.role) : null,
        m.user_id !== me.id ? h("button", {
          type: "button", class: "btn sm ghost", "aria-label": `Message ${m.name || m.user_id}`,
          on: {
            click: async () => {
              try {
                const room = await client.openDm(m.user_id);
                store.addRoom(room);
                d.close();
                openRoomCb?.(room.id);
              } catch (err) {
                d.setError(errorText(err));
              }
            },
          },
        }, "Message") : null)));
    };
    render();
    store.loadMembers(roomId).then(render, (err) => d.setError(errorText(err)));
  }

  function inviteMember() {
    const input = h("input", { class: "input", testid: "invite-member-user", id: "inv-user", autocomplete: "off", autocapitalize: "none", spellcheck: "false", placeholder: "username" });
    const submit = h("button", { type: "submit", class: "btn primary", testid: "invite-member-submit", form: "inv-form" }, "Invite");
    const done = h("p", { class: "form-ok", role: "status" });
    const form = h("form", { id: "inv-form", class: "form", novalidate: true },
      h("div", { class: "field" }, h("label", { class: "field-label", for: "inv-user" }, "User id"), input,
        h("span", { class: "field-hint" }, "They'll see the room in their sidebar right away.")), done);
    const rid = roomId;
    const d = openDialog({
      title: `Invite to #${store.roomName(rid)}`, body: form,
      actions: [h("button", { type: "button", class: "btn", on: { click: () => d.close() } }, "Close"), submit],
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const id = input.value.trim().replace(/^@/, "");
      if (!id) return d.setError("Enter a user id.");
      d.setError("");
      done.textContent = "";
      submit.disabled = true;
      try {
        await client.invite(rid, id);
        done.textContent = `Invited @${id}.`;
        input.value = "";
        input.focus();
      } catch (err) {
        d.setError(err.code === "not_found" ? `There is no user "${id}".` : err.code === "conflict" ? `@${id} is already a member.` : errorText(err));
      } finally {
        submit.disabled = false;
      }
    });
  }

  async function leaveRoom() {
    const rid = roomId;
    const ok = await confirmDialog({
      title: `Leave #${store.roomName(rid)}?`,
      message: store.rooms.get(rid)?.room.visibility === "private"
        ? "This room is private: you'll need a new invite to come back."
        : "You can join again any time from Browse rooms.",
      confirmLabel: "Leave room", danger: true,
    });
    if (!ok) return;
    try {
      await client.leaveRoom(rid);
      store.refreshRooms();
    } catch (err) {
      alertDialog(errorText(err));
    }
  }

  // ---- open / close ----------------------------------------------------------------------

  let openRoomCb = null;

  function resetDom() {
    list.replaceChildren();
    msgEls.clear();
    sigs.clear();
    pendEls.clear();
    dayEls.clear();
    askedReceipts.clear();
    markerId = null;
    highlightId = null;
    editingId = null;
    newBelow = 0;
    loadingOlder = false;
    loadingNewer = false;
  }

  function computeMarker() {
    const r = store.rooms.get(roomId);
    markerId = null;
    if (!r || !r.unread) return;
    for (const id of conv.order) {
      if (compareIds(id, r.readUpTo) <= 0) continue;
      const m = conv.msgs.get(id);
      if (m.sender_id !== me.id && m.type !== "system" && !m.deleted_at) {
        markerId = id;
        return;
      }
    }
  }

  async function open(id, { messageId } = {}) {
    const seq = ++openSeq;
    const switching = id !== roomId;
    roomId = id;
    store.openRoomId = id;
    empty.hidden = true;
    main.hidden = false;
    if (switching) {
      resetDom();
      renderHeader();
      renderTyping();
      composer.setRoom(id, labelFor(id));
      list.append(h("div", { class: "list-loading on center" }, h("span", { class: "spinner" }), "Loading messages…"));
    }
    if (!store.members.has(id)) store.loadMembers(id).catch(() => {});
    conv = store.conv(id);
    try {
      if (messageId) {
        await store.loadAround(id, messageId);
        if (seq !== openSeq) return;
        if (switching) computeMarker();
        highlightId = messageId;
        render({ focusId: messageId });
        const el = msgEls.get(messageId);
        setTimeout(() => {
          if (highlightId === messageId) highlightId = null;
          el?.classList.remove("flash");
        }, 2500);
      } else if (conv.loaded && conv.atLatest) {
        if (switching) computeMarker();
        render({ reset: switching });
      } else {
        const unread = store.rooms.get(id)?.unread || 0;
        await store.loadLatest(id, { limit: Math.min(200, Math.max(50, unread + 10)) });
        if (seq !== openSeq) return;
        computeMarker();
        render({ reset: true });
      }
    } catch (err) {
      if (seq !== openSeq) return;
      list.replaceChildren(h("div", { class: "list-error" },
        h("p", null, `Couldn't load messages: ${errorText(err)}`),
        h("button", { type: "button", class: "btn sm", on: { click: () => { roomId = null; open(id, { messageId }); } } }, "Try again")));
    }
  }

  function labelFor(id) {
    const r = store.rooms.get(id);
    if (!r) return "";
    return r.room.kind === "dm" ? store.roomName(id) : `#${r.room.name}`;
  }

  function close() {
    openSeq++;
    roomId = null;
    conv = null;
    store.openRoomId = null;
    resetDom();
    main.hidden = true;
    empty.hidden = false;
    composer.setRoom(null, "");
  }

  // Keep the composer placeholder in step with DM names as they load.
  store.on("room", (id) => {
    if (id === roomId) composer.textarea.placeholder = `Message ${labelFor(id)}`;
  });

  return {
    el,
    open,
    close,
    get roomId() { return roomId; },
    focusComposer: () => composer.focus(),
    setOpenRoom: (fn) => { openRoomCb = fn; },
    refresh: () => schedule({}),
  };
}
