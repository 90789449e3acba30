// The app's model, fed by the SDK's events: rooms (with unread counts and previews), users
// (names and presence), per-room message caches keyed by id, pending sends, typing and
// receipt watermarks. Views subscribe to its events; nothing here touches the DOM.

import { compareIds, maxId, idAtTime } from "/sdk/confab.js";
import { Emitter } from "/sdk/emitter.js";
import { pool, debounce } from "./dom.js";

const STATUS_RANK = { sent: 0, delivered: 1, read: 2 };

/** Picks the newer version of a message (history pages may be older than events). */
function newer(a, b) {
  if (!a) return b;
  if (!b) return a;
  if (a.deleted_at && !b.deleted_at) return keepStatus(a, b);
  if (b.deleted_at && !a.deleted_at) return keepStatus(b, a);
  const ea = a.edited_at || 0;
  const eb = b.edited_at || 0;
  const pick = eb >= ea ? b : a;
  return keepStatus(pick, pick === a ? b : a);
}

function keepStatus(m, other) {
  if ((STATUS_RANK[other.status] ?? 0) > (STATUS_RANK[m.status] ?? 0)) return { ...m, status: other.status };
  return m;
}

export class Conv {
  constructor(roomId) {
    this.roomId = roomId;
    this.msgs = new Map();
    this.order = [];
    this.hasMoreBefore = true;
    this.atLatest = true;
    this.loaded = false;
    this.tail = new Map(); // live messages received while the window is not at the latest
    this.pendings = new Map(); // client_msg_id → pending entry
  }

  /** Adds or updates messages; returns whether the order changed. */
  merge(list) {
    let added = false;
    for (const m of list) {
      const prev = this.msgs.get(m.id);
      this.msgs.set(m.id, newer(prev, m));
      if (!prev) added = true;
    }
    if (added) this.order = [...this.msgs.keys()].sort(compareIds);
    return added;
  }

  get oldest() { return this.order[0] ?? null; }
  get newest() { return this.order[this.order.length - 1] ?? null; }

  reset() {
    this.msgs.clear();
    this.order = [];
    this.tail.clear();
    this.hasMoreBefore = true;
    this.atLatest = true;
    this.loaded = false;
  }
}

export class Store extends Emitter {
  constructor(client, me) {
    super();
    this.client = client;
    this.me = me; // {id, name}
    this.admin = false;
    this.rooms = new Map(); // id → RoomState
    this.users = new Map(); // id → {id, name, presence, last_seen}
    this.members = new Map(); // roomId → Map(userId → member)
    this.convs = new Map(); // roomId → Conv
    this.typing = new Map(); // roomId → Map(userId → timer)
    this.wm = new Map(); // roomId → {delivered: Map, read: Map}
    this.openRoomId = null;
    this.loadedRooms = false;
    this.refreshRooms = debounce(() => this.loadRooms().catch(() => {}), 400);
    this.#listen();
  }

  // ---- users -----------------------------------------------------------------------------

  user(id) {
    let u = this.users.get(id);
    if (!u) {
      u = { id, name: null, presence: null, last_seen: null };
      this.users.set(id, u);
    }
    return u;
  }

  nameOf(id) {
    if (id === this.me.id) return this.me.name || id;
    return this.users.get(id)?.name || id;
  }

  #noteMember(roomId, m) {
    const u = this.user(m.user_id);
    const changed = u.name !== m.name || (m.presence && u.presence !== m.presence);
    u.name = m.name || u.name;
    if (m.presence) u.presence = m.presence;
    if (m.last_seen !== undefined) u.last_seen = m.last_seen;
    let map = this.members.get(roomId);
    if (!map) {
      map = new Map();
      this.members.set(roomId, map);
    }
    map.set(m.user_id, m);
    if (changed) this.emit("user", m.user_id);
  }

  async loadMembers(roomId) {
    const list = await this.client.listMembers(roomId);
    this.members.set(roomId, new Map());
    for (const m of list) this.#noteMember(roomId, m);
    const r = this.rooms.get(roomId);
    if (r) {
      if (r.room.kind === "dm") {
        const other = list.find((m) => m.user_id !== this.me.id);
        r.otherId = other ? other.user_id : r.otherId;
      }
      r.room = { ...r.room, member_count: list.length };
      this.emit("room", roomId);
    }
    this.emit("members", roomId);
    return list;
  }

  // ---- rooms -----------------------------------------------------------------------------

  roomName(roomId) {
    const r = this.rooms.get(roomId);
    if (!r) return "";
    if (r.room.kind === "dm") {
      if (r.otherId) return this.nameOf(r.otherId);
      return "Direct message";
    }
    return r.room.name;
  }

  #upsertRoom(room) {
    let r = this.rooms.get(room.id);
    if (!r) {
      r = { room, unread: 0, readUpTo: "0", last: null, otherId: null, countedUpTo: "0", counted: new Set() };
      this.rooms.set(room.id, r);
    } else {
      r.room = { ...r.room, ...room };
    }
    if (room.unread_count != null) r.unread = room.unread_count;
    if (room.read_up_to != null) r.readUpTo = maxId(r.readUpTo, room.read_up_to);
    return r;
  }

  async loadRooms() {
    const baseline = idAtTime(this.client.serverNow());
    const list = await this.client.listRooms();
    const ids = new Set(list.map((r) => r.id));
    const fresh = [];
    for (const room of list) {
      const known = this.rooms.has(room.id);
      const r = this.#upsertRoom(room);
      r.countedUpTo = maxId(r.countedUpTo, baseline);
      if (!known) fresh.push(room.id);
    }
    for (const id of [...this.rooms.keys()]) if (!ids.has(id)) this.#dropRoom(id);
    this.loadedRooms = true;
    this.emit("rooms");
    this.emit("unread");
    // Previews and names: DMs first (their name is the other member's).
    const order = [...fresh].sort((a, b) => (this.rooms.get(a).room.kind === "dm" ? -1 : 0) - (this.rooms.get(b).room.kind === "dm" ? -1 : 0));
    pool(order, 4, async (id) => {
      await Promise.all([this.loadMembers(id), this.#loadPreview(id)]);
    });
    return list;
  }

  async #loadPreview(roomId) {
    const page = await this.client.history(roomId, { limit: 1 });
    const m = page.messages[0];
    const r = this.rooms.get(roomId);
    if (m && r && (!r.last || compareIds(m.id, r.last.id) >= 0)) {
      r.last = newer(r.last?.id === m.id ? r.last : null, m);
      this.emit("room", roomId);
    }
  }

  #dropRoom(id) {
    if (!this.rooms.has(id)) return;
    this.rooms.delete(id);
    this.convs.delete(id);
    this.members.delete(id);
    this.typing.delete(id);
    this.emit("room_removed", id);
    this.emit("rooms");
    this.emit("unread");
  }

  addRoom(room) {
    const known = this.rooms.has(room.id);
    this.#upsertRoom(room);
    if (!known) {
      this.emit("rooms");
      Promise.all([this.loadMembers(room.id), this.#loadPreview(room.id)]).catch(() => {});
    }
    return this.rooms.get(room.id);
  }

  totalUnread() {
    let n = 0;
    for (const r of this.rooms.values()) n += r.unread || 0;
    return n;
  }

  setUnread(roomId, n) {
    const r = this.rooms.get(roomId);
    if (!r || r.unread === n) return;
    r.unread = n;
    this.emit("room", roomId);
    this.emit("unread");
  }

  /** Marks `messageId` read (the newest the user saw); updates the unread count. */
  markRead(roomId, messageId) {
    const r = this.rooms.get(roomId);
    if (!r || compareIds(messageId, r.readUpTo) <= 0) return;
    r.readUpTo = messageId;
    const conv = this.convs.get(roomId);
    if (conv && conv.atLatest && conv.loaded) {
      let n = 0;
      for (const id of conv.order) {
        if (compareIds(id, messageId) <= 0) continue;
        const m = conv.msgs.get(id);
        if (m.sender_id !== this.me.id && !m.deleted_at && m.type !== "system") n++;
      }
      this.setUnread(roomId, n);
    } else {
      this.refreshRooms();
    }
    this.client.markRead(roomId, messageId).catch(() => {});
  }

  // ---- conversations ---------------------------------------------------------------------

  conv(roomId) {
    let c = this.convs.get(roomId);
    if (!c) {
      c = new Conv(roomId);
      this.convs.set(roomId, c);
    }
    return c;
  }

  #noteStatuses(roomId, list) {
    // Own messages the server calls delivered tell us every other member got that far.
    let delivered = null;
    for (const m of list) if (m.sender_id === this.me.id && m.status !== "sent") delivered = maxId(delivered, m.id);
    if (!delivered) return;
    const members = this.members.get(roomId);
    if (!members) return;
    const w = this.#wm(roomId);
    for (const uid of members.keys()) if (uid !== this.me.id) w.delivered.set(uid, maxId(w.delivered.get(uid), delivered));
  }

  /** Loads the newest page (enough to reach the first unread message). */
  async loadLatest(roomId, { limit = 50 } = {}) {
    const conv = this.conv(roomId);
    const page = await this.client.history(roomId, { limit });
    const tail = [...conv.tail.values()];
    conv.reset();
    conv.merge(page.messages);
    conv.merge(tail);
    conv.hasMoreBefore = page.has_more;
    conv.atLatest = true;
    conv.loaded = true;
    this.#noteStatuses(roomId, page.messages);
    this.emit("conv", { roomId, type: "reset" });
    return conv;
  }

  async loadOlder(roomId) {
    const conv = this.conv(roomId);
    if (!conv.oldest) return conv;
    const page = await this.client.history(roomId, { before: conv.oldest, limit: 50 });
    conv.merge(page.messages);
    conv.hasMoreBefore = page.has_more;
    this.#noteStatuses(roomId, page.messages);
    this.emit("conv", { roomId, type: "older" });
    return conv;
  }

  async loadNewer(roomId) {
    const conv = this.conv(roomId);
    if (conv.atLatest || !conv.newest) return conv;
    const page = await this.client.history(roomId, { after: conv.newest, limit: 50 });
    conv.merge(page.messages);
    if (!page.has_more) {
      conv.atLatest = true;
      conv.merge([...conv.tail.values()]);
      conv.tail.clear();
    }
    this.#noteStatuses(roomId, page.messages);
    this.emit("conv", { roomId, type: "newer" });
    return conv;
  }

  /** Loads the messages around `messageId` (a search hit). */
  async loadAround(roomId, messageId) {
    const conv = this.conv(roomId);
    if (conv.loaded && conv.msgs.has(messageId)) return conv;
    const before = (BigInt(messageId) + 1n).toString();
    const [older, newerPage] = await Promise.all([
      this.client.history(roomId, { before, limit: 30 }),
      this.client.history(roomId, { after: messageId, limit: 30 }),
    ]);
    const tail = conv.atLatest ? [...conv.msgs.values()] : [...conv.tail.values()];
    conv.reset();
    conv.merge(older.messages);
    conv.merge(newerPage.messages);
    conv.hasMoreBefore = older.has_more;
    conv.atLatest = !newerPage.has_more;
    conv.loaded = true;
    const newest = conv.newest;
    const later = tail.filter((m) => newest && compareIds(m.id, newest) > 0);
    if (conv.atLatest) conv.merge(later);
    else for (const m of later) conv.tail.set(m.id, m);
    this.#noteStatuses(roomId, [...older.messages, ...newerPage.messages]);
    this.emit("conv", { roomId, type: "reset" });
    return conv;
  }

  // ---- receipts --------------------------------------------------------------------------

  #wm(roomId) {
    let w = this.wm.get(roomId);
    if (!w) {
      w = { delivered: new Map(), read: new Map() };
      this.wm.set(roomId, w);
    }
    return w;
  }

  noteReadBy(roomId, messageId, userIds) {
    const w = this.#wm(roomId);
    for (const u of userIds) {
      w.read.set(u, maxId(w.read.get(u), messageId));
      w.delivered.set(u, maxId(w.delivered.get(u), messageId));
    }
    this.emit("receipts", roomId);
  }

  /** The status of an own message: the server's, raised by the receipts seen since. */
  statusOf(roomId, m) {
    let status = m.status || "sent";
    const members = this.members.get(roomId);
    if (!members || status === "read") return status;
    const others = [...members.keys()].filter((u) => u !== m.sender_id);
    if (!others.length) return status;
    const w = this.#wm(roomId);
    const reached = (map, u) => {
      const v = map.get(u);
      return v != null && compareIds(v, m.id) >= 0;
    };
    if (others.every((u) => reached(w.read, u))) return "read";
    if (status === "sent" && others.every((u) => reached(w.delivered, u) || reached(w.read, u))) status = "delivered";
    return status;
  }

  /** Other members whose read watermark reached `m` (names resolved by the caller). */
  readersOf(roomId, m) {
    const w = this.wm.get(roomId);
    if (!w) return [];
    const out = [];
    for (const [u, id] of w.read) if (u !== m.sender_id && compareIds(id, m.id) >= 0) out.push(u);
    return out;
  }

  // ---- typing ----------------------------------------------------------------------------

  typists(roomId) {
    return [...(this.typing.get(roomId)?.keys() || [])];
  }

  #setTyping(roomId, userId, on) {
    let map = this.typing.get(roomId);
    if (!map) {
      map = new Map();
      this.typing.set(roomId, map);
    }
    clearTimeout(map.get(userId));
    if (on) {
      map.set(userId, setTimeout(() => this.#setTyping(roomId, userId, false), 6000));
    } else if (map.has(userId)) {
      map.delete(userId);
    } else {
      return;
    }
    this.emit("typing", roomId);
  }

  // ---- SDK events ------------------------------------------------------------------------

  #listen() {
    const c = this.client;
    c.on("message", (ev) => this.#onMessage(ev));
    c.on("pending", (ev) => this.#onPending(ev));
    c.on("receipt", (ev) => {
      if (ev.user_id === this.me.id) {
        if (ev.kind === "read") {
          const r = this.rooms.get(ev.room_id);
          if (r && compareIds(ev.message_id, r.readUpTo) > 0) {
            r.readUpTo = ev.message_id;
            if (r.last && compareIds(ev.message_id, r.last.id) >= 0) this.setUnread(ev.room_id, 0);
            else this.refreshRooms();
          }
        }
        return;
      }
      const w = this.#wm(ev.room_id);
      w.delivered.set(ev.user_id, maxId(w.delivered.get(ev.user_id), ev.message_id));
      if (ev.kind === "read") w.read.set(ev.user_id, maxId(w.read.get(ev.user_id), ev.message_id));
      this.emit("receipts", ev.room_id);
    });
    c.on("typing", (ev) => {
      if (ev.user_id === this.me.id) return;
      this.#setTyping(ev.room_id, ev.user_id, ev.state === "start");
    });
    c.on("presence", (ev) => {
      const u = this.user(ev.user_id);
      u.presence = ev.status;
      u.last_seen = ev.last_seen;
      for (const map of this.members.values()) {
        const m = map.get(ev.user_id);
        if (m) {
          m.presence = ev.status;
          m.last_seen = ev.last_seen;
        }
      }
      this.emit("user", ev.user_id);
    });
    c.on("room", (ev) => {
      if (ev.type === "room_added") {
        if (this.loadedRooms) this.addRoom(ev.room);
      } else if (ev.type === "room_removed") {
        this.#dropRoom(ev.room_id);
      } else if (ev.type === "member_joined") {
        if (ev.member) this.#noteMember(ev.room_id, ev.member);
        const r = this.rooms.get(ev.room_id);
        if (r && this.members.get(ev.room_id)) r.room = { ...r.room, member_count: this.members.get(ev.room_id).size };
        this.emit("room", ev.room_id);
        this.emit("members", ev.room_id);
      } else if (ev.type === "member_left") {
        this.members.get(ev.room_id)?.delete(ev.user_id);
        const r = this.rooms.get(ev.room_id);
        if (r && this.members.get(ev.room_id)) r.room = { ...r.room, member_count: this.members.get(ev.room_id).size };
        this.emit("room", ev.room_id);
        this.emit("members", ev.room_id);
      }
    });
  }

  #onMessage({ kind, room_id: roomId, message: m, live, own }) {
    const r = this.rooms.get(roomId);
    if (r) {
      if (!r.last || compareIds(m.id, r.last.id) > 0) {
        if (kind === "new") r.last = m;
      } else if (r.last.id === m.id) {
        r.last = newer(r.last, m);
      }
      if (kind === "new" && !own && !m.deleted_at && m.type !== "system"
        && compareIds(m.id, r.readUpTo) > 0 && compareIds(m.id, r.countedUpTo) > 0) {
        r.unread += 1;
        r.counted.add(m.id);
        if (r.counted.size > 2000) r.counted.delete(r.counted.values().next().value);
        this.emit("unread");
      }
      if (kind === "deleted" && r.counted.has(m.id)) {
        r.counted.delete(m.id);
        if (r.unread > 0 && compareIds(m.id, r.readUpTo) > 0) {
          r.unread -= 1;
          this.emit("unread");
        }
      }
      this.emit("room", roomId);
    }
    if (kind === "new" && !own) this.#setTyping(roomId, m.sender_id, false);
    const conv = this.convs.get(roomId);
    if (conv) {
      if (own && m.client_msg_id && conv.pendings.has(m.client_msg_id)) conv.pendings.delete(m.client_msg_id);
      if (conv.msgs.has(m.id)) {
        conv.merge([m]);
      } else if (kind === "new" || !conv.loaded) {
        if (conv.loaded && conv.atLatest) conv.merge([m]);
        else conv.tail.set(m.id, newer(conv.tail.get(m.id), m));
      } else if (conv.tail.has(m.id)) {
        conv.tail.set(m.id, newer(conv.tail.get(m.id), m));
      }
      this.emit("conv", { roomId, type: "message", kind, id: m.id, own, live });
    }
    if (kind === "new" && live !== undefined) this.emit("incoming", { roomId, message: m, own, live });
  }

  #onPending({ status, pending, message, error }) {
    const conv = this.convs.get(pending.room_id) || (this.rooms.has(pending.room_id) ? this.conv(pending.room_id) : null);
    if (!conv) return;
    if (status === "sending") {
      conv.pendings.set(pending.client_msg_id, { ...pending, status: "sending" });
    } else if (status === "sent") {
      conv.pendings.delete(pending.client_msg_id);
      if (message && (conv.atLatest && conv.loaded)) conv.merge([message]);
    } else if (status === "failed") {
      if (error?.code === "cancelled") conv.pendings.delete(pending.client_msg_id);
      else conv.pendings.set(pending.client_msg_id, { ...pending, status: "failed", error });
    }
    this.emit("conv", { roomId: pending.room_id, type: "pending", status, own: true });
  }
}
