// ConfabClient: one WebSocket to a Confab server, kept open across network failures, with
// catch-up, de-duplication, an outbox of idempotent sends, receipts, typing, and REST helpers.
// See docs/sdk.md for the guarantees and the API, docs/protocol.md for the wire contract.

import { Emitter } from "./emitter.js";
import { ConfabError } from "./errors.js";
import { compareIds, idAtTime, isId, maxId, previousId, toId } from "./ids.js";
import { normalizeBaseUrl, requestJson, uploadRaw, webSocketUrl } from "./http.js";
import { tokenExpiry } from "./token.js";

export const SDK_VERSION = "1.0.0";

const DEFAULTS = Object.freeze({
  requestTimeoutMs: 10000,
  syncTimeoutMs: 30000,
  connectTimeoutMs: 15000,
  pingTimeoutMs: 10000,
  keepaliveMs: null,
  syncLimit: 200,
  backoffBaseMs: 250,
  backoffMaxMs: 30000,
  stableAfterMs: 10000,
  policyBackoffMinMs: 10000,
  autoDelivered: true,
  deliveredDelayMs: 300,
  typingIntervalMs: 2000,
  dedupeWindow: 1000,
  catchUpMarginMs: 5000,
  autoConnect: true,
  persist: false,
  storage: undefined,
  storageKey: undefined,
  syncState: undefined,
  WebSocket: undefined,
});

/** Requests that may be sent again after a disconnect without changing their effect. */
const RETRYABLE = new Set([
  "history", "list_rooms", "list_public_rooms", "list_members", "open_dm", "ping",
  "mark_delivered", "mark_read", "message_receipts", "set_settings", "search", "edit_message",
]);

/** Send failures worth retrying; anything else fails the pending message. */
const TRANSIENT = new Set(["timeout", "unavailable", "internal", "rate_limited"]);

const OPEN = 1;
const CLOSE_LOCAL = 4000; // our own close code (drops, keepalive failures, reconnect())

/**
 * A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. Time-ordered ids append
 * at the end of the server's idempotency index instead of landing in a random page of it.
 */
export function uuidv7(now = Date.now()) {
  const c = globalThis.crypto;
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  // Bytes 0-5: the milliseconds, big-endian (division, not shifts: JS shifts are 32-bit).
  let ms = Math.max(0, Math.floor(now));
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}


function byteLength(s) {
  return typeof TextEncoder === "function" ? new TextEncoder().encode(s).length : s.length * 3;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function publicPending(p) {
  return {
    client_msg_id: p.client_msg_id,
    room_id: p.room_id,
    type: p.type,
    content: p.content,
    file_id: p.file_id ?? null,
    status: p.status,
    created_at: p.created_at,
    attempts: p.attempts,
  };
}

export class ConfabClient {
  #em = new Emitter();
  #o;
  #base;
  #token = null;
  #getToken = null;
  #tokenPromise = null;
  #needFreshToken = false;
  #probing = null;

  #state = "offline";
  #attempt = 0;
  #retryTimer = null;
  #started = false;
  #closed = false;
  #conn = null;
  #connSeq = 0;
  #lastFrameAt = 0;
  #user = null;
  #limits = null;
  #serverOffset = 0;
  #liveWaiters = new Set();
  #windowListeners = null;
  /** Set between `pagehide` and `pageshow`: no reconnecting while the page is hidden. */
  #suspended = false;

  #rooms = new Map();
  #cursors = new Map();
  #seen = new Map();
  #since = null;
  #late = new Map();
  #stats = { duplicates: 0 };

  #refSeq = 0;
  #inflight = new Map();
  #waiting = [];

  #outbox = [];
  #callbacks = new Map();
  #pumping = false;

  #typingSent = new Map();
  #deliverQueue = new Map();
  #deliverSent = new Map();
  #deliverTimer = null;

  #persistTimer = null;
  #persistLoaded = false;

  /**
   * @param {object} options see docs/sdk.md
   */
  constructor(options = {}) {
    this.#o = { ...DEFAULTS, ...options };
    this.#base = normalizeBaseUrl(options.url);
    if (options.token != null) {
      if (typeof options.token !== "string" || !options.token) throw new TypeError("token must be a string");
      this.#token = options.token;
    }
    if (options.getToken != null) {
      if (typeof options.getToken !== "function") throw new TypeError("getToken must be a function");
      this.#getToken = options.getToken;
    }
    if (!this.#token && !this.#getToken) throw new TypeError("ConfabClient needs `token` or `getToken`");
    const p = this.#o.persist;
    this.#o.persist = p === true ? { outbox: true, cursors: true }
      : p && typeof p === "object" ? { outbox: !!p.outbox, cursors: !!p.cursors } : null;
    if (this.#o.syncState) this.#restoreSyncState(this.#o.syncState);
    if (this.#o.autoConnect) this.connect();
  }

  // ---- public state ----------------------------------------------------------------------

  /** "connecting" | "syncing" | "live" | "offline" | "closed" */
  get state() { return this.#state; }
  /** The user from the server's `hello` ({id, name}), null before the first one. */
  get user() { return this.#user; }
  /** `hello.limits` ({max_message_bytes, max_frame_bytes}), null before the first hello. */
  get limits() { return this.#limits; }
  /** The server's base URL (no trailing slash). */
  get url() { return this.#base; }
  /** Rooms the user is a member of, as last received (a copy). */
  get rooms() { return [...this.#rooms.values()]; }
  /** Messages waiting in the outbox, oldest first (copies). */
  get pending() { return this.#outbox.map(publicPending); }
  /** Server time estimate: Date.now() corrected by the offset measured at `hello`. */
  serverNow() { return Date.now() + this.#serverOffset; }
  /** Counters for diagnostics: {duplicates} dropped. */
  get stats() { return { ...this.#stats }; }

  /** Adds a listener; returns a function that removes it. */
  on(name, fn) { return this.#em.on(name, fn); }
  /** Removes a listener. */
  off(name, fn) { this.#em.off(name, fn); }
  /** Calls fn at the next `name` event only. */
  once(name, fn) { return this.#em.once(name, fn); }

  /** Resolves when the connection is live (caught up); rejects after timeoutMs or close(). */
  whenLive({ timeoutMs } = {}) {
    if (this.#state === "live") return Promise.resolve();
    if (this.#closed) return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => {
      const w = { resolve, reject, timer: null };
      if (timeoutMs != null) {
        w.timer = setTimeout(() => {
          this.#liveWaiters.delete(w);
          reject(new ConfabError("timeout", `not live within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.#liveWaiters.add(w);
    });
  }

  // ---- lifecycle -------------------------------------------------------------------------

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this.#closed) throw this.#closedError();
    if (this.#started) return;
    this.#started = true;
    this.#listenToWindow();
    // Deferred, so listeners added right after the constructor see the first `connection` event.
    queueMicrotask(() => this.#openSocket());
  }

  /** Drops the current connection (if any) and connects again now, skipping any backoff. */
  reconnect() {
    if (this.#closed) throw this.#closedError();
    if (!this.#started) return this.connect();
    if (this.#conn) {
      this.#onClosed(this.#conn, { code: CLOSE_LOCAL, reason: "reconnect requested", immediate: true });
    } else {
      this.#connectNow();
    }
  }

  /** Replaces the token (for clients without getToken) and reconnects if the connection is down. */
  setToken(token) {
    if (typeof token !== "string" || !token) throw new TypeError("token must be a string");
    this.#token = token;
    this.#needFreshToken = false;
    if (this.#started && !this.#closed && !this.#conn && this.#state === "offline") this.#connectNow();
  }

  /** Closes the connection for good: pending requests and sends reject with `closed`. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    clearTimeout(this.#deliverTimer);
    this.#deliverTimer = null;
    this.#unlistenToWindow();
    if (this.#persistTimer) {
      clearTimeout(this.#persistTimer);
      this.#persistTimer = null;
      this.#savePersisted();
    }
    const conn = this.#conn;
    if (conn) {
      this.#conn = null;
      this.#teardown(conn, 1000, "client closed");
    }
    const err = this.#closedError();
    for (const e of [...this.#inflight.values(), ...this.#waiting]) this.#settle(e, err);
    this.#inflight.clear();
    this.#waiting = [];
    for (const [id, cb] of this.#callbacks) {
      cb.reject(err);
      this.#callbacks.delete(id);
    }
    for (const w of this.#liveWaiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.#liveWaiters.clear();
    this.#setState("closed", {});
  }

  // ---- requests --------------------------------------------------------------------------

  /**
   * Sends any request event and resolves with its `ack` data. Waits for the connection to be
   * live (up to the timeout). Prefer the named methods below.
   */
  async request(event, data, { timeoutMs } = {}) {
    return this.#request(event, data, { timeoutMs });
  }

  /** A page of history, newest first: {messages, has_more}. */
  async history(roomId, { before, after, limit } = {}) {
    const data = { room_id: toId(roomId) };
    if (before != null) data.before = toId(before);
    if (after != null) data.after = toId(after);
    if (limit != null) data.limit = limit;
    return this.#request("history", data);
  }

  /** Creates a group room; resolves with the Room. */
  async createRoom({ name, topic, visibility } = {}) {
    const data = { name };
    if (topic != null) data.topic = topic;
    if (visibility != null) data.visibility = visibility;
    const ack = await this.#request("create_room", data);
    if (ack.room && !this.#rooms.has(ack.room.id)) this.#addRoom(ack.room, true);
    return ack.room;
  }

  /** The user's rooms (with unread_count and read_up_to). */
  async listRooms() {
    const ack = await this.#request("list_rooms");
    for (const r of ack.rooms) if (this.#rooms.has(r.id)) this.#rooms.set(r.id, r);
    return ack.rooms;
  }

  /** Every public room. */
  async listPublicRooms() {
    return (await this.#request("list_public_rooms")).rooms;
  }

  /** Joins a public room; resolves with the Room. */
  async joinRoom(roomId) {
    const { room } = await this.#request("join_room", { room_id: toId(roomId) });
    if (room && !this.#rooms.has(room.id)) this.#addRoom(room, true);
    return room;
  }

  /** Invites a user into a group room. */
  async invite(roomId, userId) {
    await this.#request("invite", { room_id: toId(roomId), user_id: String(userId) });
  }

  /** Leaves a room. */
  async leaveRoom(roomId) {
    await this.#request("leave_room", { room_id: toId(roomId) });
  }

  /** The members of a room (with presence). */
  async listMembers(roomId) {
    return (await this.#request("list_members", { room_id: toId(roomId) })).members;
  }

  /** The DM room with a user (the same every time); resolves with the Room. */
  async openDm(userId) {
    const { room } = await this.#request("open_dm", { user_id: String(userId) });
    if (room && !this.#rooms.has(room.id)) this.#addRoom(room, true);
    return room;
  }

  /** Says the user's devices received messages up to messageId (done automatically by default). */
  async markDelivered(roomId, messageId) {
    const room = toId(roomId);
    const id = toId(messageId);
    await this.#request("mark_delivered", { room_id: room, message_id: id });
    this.#deliverSent.set(room, maxId(this.#deliverSent.get(room), id));
  }

  /** Marks messages up to messageId as read; resolves with {read_at}. */
  async markRead(roomId, messageId) {
    const room = toId(roomId);
    const id = toId(messageId);
    const ack = await this.#request("mark_read", { room_id: room, message_id: id });
    this.#deliverSent.set(room, maxId(this.#deliverSent.get(room), id));
    return ack;
  }

  /** Who received and read a message: {message_id, status, recipients, delivered, read}. */
  async messageReceipts(roomId, messageId) {
    return this.#request("message_receipts", { room_id: toId(roomId), message_id: toId(messageId) });
  }

  /**
   * Typing indicator. `start` is sent at most once per typingIntervalMs (2 s) per room; `stop`
   * only after a `start`. Never queued: resolves false (nothing sent) while not live.
   */
  async typing(roomId, state = "start") {
    if (state !== "start" && state !== "stop") throw new TypeError('state must be "start" or "stop"');
    const room = toId(roomId);
    const now = Date.now();
    if (state === "start") {
      const last = this.#typingSent.get(room);
      if (last != null && now - last < this.#o.typingIntervalMs) return false;
    } else if (!this.#typingSent.has(room)) {
      return false;
    }
    if (this.#state !== "live") return false;
    if (state === "start") this.#typingSent.set(room, now);
    else this.#typingSent.delete(room);
    await this.#request("typing", { room_id: room, state });
    return true;
  }

  /** Changes the user's settings: {privateReceipts}. Resolves with {private_receipts}. */
  async setSettings(settings = {}) {
    const data = {};
    const pr = settings.privateReceipts ?? settings.private_receipts;
    if (pr != null) data.private_receipts = !!pr;
    return (await this.#request("set_settings", data)).settings;
  }

  /** Full-text search: {hits, next_cursor, took_ms}. */
  async search(q, { roomId, senderId, from, to, hasFile, sort, limit, cursor } = {}) {
    const data = { q: String(q) };
    if (roomId != null) data.room_id = toId(roomId);
    if (senderId != null) data.sender_id = String(senderId);
    if (from != null) data.from = from;
    if (to != null) data.to = to;
    if (hasFile != null) data.has_file = !!hasFile;
    if (sort != null) data.sort = sort;
    if (limit != null) data.limit = limit;
    if (cursor != null) data.cursor = cursor;
    return this.#request("search", data);
  }

  /** Edits a message; resolves with the edited Message. */
  async editMessage(roomId, messageId, content) {
    return (await this.#request("edit_message", {
      room_id: toId(roomId), message_id: toId(messageId), content: String(content),
    })).message;
  }

  /** Deletes a message; resolves with the Message as deleted (content ""). */
  async deleteMessage(roomId, messageId) {
    return (await this.#request("delete_message", {
      room_id: toId(roomId), message_id: toId(messageId),
    })).message;
  }

  /** Round trip to the server: {server_time, rtt_ms}. */
  async ping() {
    const t0 = Date.now();
    const ack = await this.#request("ping");
    return { server_time: ack.server_time, rtt_ms: Date.now() - t0 };
  }

  // ---- sending ---------------------------------------------------------------------------

  /**
   * Sends a message through the outbox: it is sent when the connection is live, retried until
   * the server acks it (the same client_msg_id every time, so it is stored once), and resolves
   * with the stored Message. `pending` events show its progress.
   * @param {string} roomId
   * @param {string} content text, or the caption of a file/image ("" allowed there)
   * @param {{type?: "text"|"file"|"image", fileId?: string, clientMsgId?: string}} [opts]
   */
  sendMessage(roomId, content, opts = {}) {
    if (this.#closed) return Promise.reject(this.#closedError());
    const type = opts.type ?? "text";
    let item;
    try {
      item = {
        client_msg_id: opts.clientMsgId ?? uuidv7(),
        room_id: toId(roomId),
        type,
        content: content == null ? "" : String(content),
        file_id: opts.fileId != null ? toId(opts.fileId) : undefined,
        status: "sending",
        created_at: Date.now(),
        attempts: 0,
      };
    } catch (err) {
      return Promise.reject(new ConfabError("invalid_payload", err.message, { event: "send_message" }));
    }
    const idBytes = byteLength(item.client_msg_id);
    if (idBytes < 1 || idBytes > 64) {
      return Promise.reject(new ConfabError("invalid_payload", "clientMsgId must be 1-64 bytes", { event: "send_message" }));
    }
    if (this.#outbox.some((p) => p.client_msg_id === item.client_msg_id)) {
      return Promise.reject(new ConfabError("invalid_payload", "this clientMsgId is already pending", { event: "send_message" }));
    }
    const max = this.#limits?.max_message_bytes;
    if (max && byteLength(item.content) > max) {
      return Promise.reject(new ConfabError("too_large", `content is over ${max} bytes`, { event: "send_message" }));
    }
    if (type === "text" && !item.content.trim()) {
      return Promise.reject(new ConfabError("invalid_payload", "content must not be empty", { event: "send_message" }));
    }
    const promise = new Promise((resolve, reject) => {
      this.#callbacks.set(item.client_msg_id, { resolve, reject });
    });
    this.#outbox.push(item);
    this.#savePersistedSoon(true);
    this.#em.emit("pending", { status: "sending", pending: publicPending(item) });
    if (this.#typingSent.has(item.room_id)) this.typing(item.room_id, "stop").catch(() => {});
    this.#pump();
    return promise;
  }

  /**
   * Drops a message from the outbox if it is not being sent right now. Its promise rejects
   * with `cancelled`. Returns whether it was dropped.
   */
  discardPending(clientMsgId) {
    const i = this.#outbox.findIndex((p) => p.client_msg_id === clientMsgId);
    if (i < 0 || (i === 0 && this.#outbox[0].inFlight)) return false;
    const [item] = this.#outbox.splice(i, 1);
    this.#savePersistedSoon(true);
    this.#finishPending(item, null, new ConfabError("cancelled", "discarded from the outbox", { event: "send_message" }));
    return true;
  }

  // ---- REST ------------------------------------------------------------------------------

  /**
   * Uploads a file (raw body, POST /api/files?name=) and resolves with the Upload record.
   * `onProgress({loaded, total})` reports upload progress (XMLHttpRequest; with fetch only at
   * the end). `signal` aborts it.
   */
  async uploadFile(file, { name, onProgress, signal } = {}) {
    const display = name ?? (typeof file?.name === "string" ? file.name : undefined);
    const token = await this.#currentToken();
    try {
      return await uploadRaw(this.#base, token, file, { name: display, onProgress, signal });
    } catch (err) {
      if (err.status === 401 && this.#getToken) {
        this.#needFreshToken = true;
        const fresh = await this.#currentToken();
        return uploadRaw(this.#base, fresh, file, { name: display, onProgress, signal });
      }
      throw err;
    }
  }

  /** Sets the `confab_files` cookie (same-origin pages: `<img src="/files/ID/thumb">` works). */
  async fileCookie() {
    await this.#rest("POST", "/api/files/cookie", undefined, { credentials: "include" });
  }

  /** A signed URL for a file: {url, thumbnail_url, expires_at}, URLs absolute. */
  async signedUrl(fileId) {
    const ans = await this.#rest("GET", `/api/files/${toId(fileId)}/url`);
    return {
      url: this.resolveUrl(ans.url),
      thumbnail_url: ans.thumbnail_url ? this.resolveUrl(ans.thumbnail_url) : null,
      expires_at: ans.expires_at,
    };
  }

  /** An upload's current record (thumbnail state, size, ...). */
  async getFile(fileId) {
    return (await this.#rest("GET", `/api/files/${toId(fileId)}`)).file;
  }

  /** GET /api/me: {user, settings}. */
  me() {
    return this.#rest("GET", "/api/me");
  }

  /** Makes a server path ("/files/1/thumb") absolute against the client's url. */
  resolveUrl(path) {
    if (typeof path !== "string") return path;
    if (/^[a-z][a-z0-9+.-]*:/i.test(path)) return path;
    return this.#base + (path.startsWith("/") ? path : `/${path}`);
  }

  /**
   * Creates a built-in account (no token needed): resolves with {token, user}. `invite` is the
   * invite code when the server's registration is invite-only.
   */
  static async register({ url, username, password, displayName, invite } = {}) {
    const body = { username, password };
    if (displayName != null) body.display_name = displayName;
    if (invite != null) body.invite = invite;
    return requestJson(normalizeBaseUrl(url), "POST", "/api/auth/register", { body });
  }

  /** GET /api/server (no token needed): {name, version, registration, setup_needed}. */
  static async serverInfo({ url } = {}) {
    return requestJson(normalizeBaseUrl(url), "GET", "/api/server");
  }

  /** Logs in (no token needed): resolves with {token, user}. */
  static async login({ url, username, password } = {}) {
    return requestJson(normalizeBaseUrl(url), "POST", "/api/auth/login", { body: { username, password } });
  }

  // ---- catch-up state --------------------------------------------------------------------

  /**
   * What the client needs to resume without losing or repeating messages: the last seq seen
   * per room, and the server time of the last live session. Store it with your messages and
   * pass it back as the `syncState` option.
   */
  getSyncState() {
    return { cursors: Object.fromEntries(this.#cursors), since: this.#since };
  }

  #restoreSyncState(s) {
    if (!s || typeof s !== "object") return;
    for (const [room, seq] of Object.entries(s.cursors || {})) {
      if (isId(room) && isId(seq)) this.#cursors.set(room, maxId(this.#cursors.get(room), seq));
    }
    if (Number.isFinite(s.since) && (this.#since == null || s.since < this.#since)) this.#since = s.since;
  }

  // ---- internals: connection -------------------------------------------------------------

  #closedError() {
    return new ConfabError("closed", "the client was closed");
  }

  #setState(state, extra) {
    const changed = state !== this.#state;
    this.#state = state;
    if (!changed && state !== "offline") return;
    this.#em.emit("connection", {
      state,
      attempt: this.#attempt,
      retryInMs: null,
      ...extra,
    });
  }

  #emitError(err) {
    this.#em.emit("error", err);
  }

  #listenToWindow() {
    const g = globalThis;
    if (typeof g.addEventListener !== "function") return;
    const online = () => {
      if (this.#retryTimer) this.#connectNow();
    };
    const offline = () => {
      if (this.#conn?.hello) this.#checkAlive(this.#conn);
    };
    // A page leaving (or frozen in the back/forward cache, where Chromium keeps its sockets
    // open) must not keep its user online: drop the connection, and catch up when shown again.
    const pagehide = () => {
      this.#suspended = true;
      if (this.#conn) this.#onClosed(this.#conn, { code: CLOSE_LOCAL, reason: "page hidden", suspend: true });
      else this.#stayOffline(undefined);
    };
    const pageshow = () => {
      if (!this.#suspended) return;
      this.#suspended = false;
      if (!this.#closed && !this.#conn) this.#connectNow();
    };
    g.addEventListener("online", online);
    g.addEventListener("offline", offline);
    g.addEventListener("pagehide", pagehide);
    g.addEventListener("pageshow", pageshow);
    this.#windowListeners = { online, offline, pagehide, pageshow };
  }

  #unlistenToWindow() {
    const l = this.#windowListeners;
    if (!l) return;
    globalThis.removeEventListener?.("online", l.online);
    globalThis.removeEventListener?.("offline", l.offline);
    globalThis.removeEventListener?.("pagehide", l.pagehide);
    globalThis.removeEventListener?.("pageshow", l.pageshow);
    this.#windowListeners = null;
  }

  #connectNow() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#openSocket();
  }

  async #currentToken() {
    const exp = this.#token ? tokenExpiry(this.#token) : null;
    const expired = exp != null && exp <= Date.now();
    if (this.#token && !this.#needFreshToken && !(expired && this.#getToken)) return this.#token;
    if (!this.#getToken) {
      throw new ConfabError("token_expired", "the token expired and there is no getToken to get another");
    }
    if (!this.#tokenPromise) {
      this.#tokenPromise = (async () => {
        try {
          const t = await this.#getToken();
          if (typeof t !== "string" || !t) throw new Error("getToken() did not return a string");
          this.#token = t;
          this.#needFreshToken = false;
          return t;
        } catch (cause) {
          if (cause instanceof ConfabError) throw cause;
          throw new ConfabError("token_refresh_failed", `getToken() failed: ${cause?.message || cause}`, { cause });
        } finally {
          this.#tokenPromise = null;
        }
      })();
    }
    return this.#tokenPromise;
  }

  async #rest(method, path, body, opts = {}) {
    const token = await this.#currentToken();
    const go = (t) => requestJson(this.#base, method, path, {
      token: t, body, timeoutMs: this.#o.requestTimeoutMs, credentials: opts.credentials,
    });
    try {
      return await go(token);
    } catch (err) {
      if (err.status === 401 && this.#getToken) {
        this.#needFreshToken = true;
        return go(await this.#currentToken());
      }
      throw err;
    }
  }

  async #openSocket() {
    this.#retryTimer = null;
    if (this.#closed || this.#conn || this.#suspended) return;
    const conn = {
      id: ++this.#connSeq, ws: null, opened: false, hello: null, live: false, liveAt: 0,
      timers: [], pinging: false, lateStarted: new Set(),
    };
    this.#conn = conn;
    this.#setState("connecting", { attempt: this.#attempt });
    let token;
    try {
      if (this.#probing) await this.#probing;
      token = await this.#currentToken();
    } catch (err) {
      if (this.#conn !== conn) return;
      this.#conn = null;
      this.#emitError(err);
      if (err.code === "token_expired") this.#stayOffline(err);
      else this.#scheduleReconnect(this.#nextBackoff(), { reason: err.message });
      return;
    }
    if (this.#conn !== conn || this.#closed) return;
    const WS = this.#o.WebSocket || globalThis.WebSocket;
    if (typeof WS !== "function") {
      this.#conn = null;
      const err = new ConfabError("network", "WebSocket is not available on this platform");
      this.#emitError(err);
      this.#stayOffline(err);
      return;
    }
    let ws;
    try {
      ws = new WS(webSocketUrl(this.#base, "sync=1"), ["confab", token]);
    } catch (cause) {
      this.#conn = null;
      this.#emitError(new ConfabError("network", `could not open a WebSocket: ${cause?.message || cause}`, { cause }));
      this.#scheduleReconnect(this.#nextBackoff(), { reason: "WebSocket constructor failed" });
      return;
    }
    conn.ws = ws;
    ws.onopen = () => {
      if (this.#conn === conn) conn.opened = true;
    };
    ws.onmessage = (ev) => {
      if (this.#conn === conn) this.#onFrame(conn, ev.data);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      this.#onClosed(conn, { code: ev.code, reason: ev.reason });
    };
    conn.timers.push(setTimeout(() => {
      if (this.#conn === conn && !conn.hello) {
        this.#onClosed(conn, { code: CLOSE_LOCAL, reason: "no hello from the server in time" });
      }
    }, this.#o.connectTimeoutMs));
  }

  /** Stops a connection's timers and socket without touching client state. */
  #teardown(conn, code, reason) {
    for (const t of conn.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    conn.timers = [];
    const ws = conn.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      if (ws.readyState === 0 || ws.readyState === OPEN) ws.close(code, String(reason).slice(0, 60));
    } catch {
      try {
        ws.close();
      } catch {
        // already closing
      }
    }
  }

  #onClosed(conn, info) {
    if (this.#conn !== conn) return;
    this.#conn = null;
    this.#teardown(conn, CLOSE_LOCAL, info.reason || "");
    // Requests in flight on this connection: repeat the safe ones, fail the others.
    const again = [];
    for (const [ref, e] of this.#inflight) {
      if (e.conn !== conn) continue;
      this.#inflight.delete(ref);
      e.ref = null;
      e.conn = null;
      if (!e.internal && e.retryable) again.push(e);
      else this.#settle(e, new ConfabError("disconnected", "the connection dropped before the answer", { event: e.event }));
    }
    this.#waiting = again.concat(this.#waiting);
    this.#late.clear();
    this.#typingSent.clear();
    if (this.#closed) return;
    if (info.suspend) {
      this.#stayOffline(undefined, { code: info.code, reason: info.reason });
      return;
    }

    const code = info.code;
    const now = Date.now();
    const stable = conn.live && now - conn.liveAt >= this.#o.stableAfterMs;
    if (stable && code !== 1008) this.#attempt = 0;
    const detail = { code, reason: info.reason || "" };
    let delay;
    if (info.immediate) {
      delay = 0;
    } else if (code === 4001) {
      this.#needFreshToken = true;
      if (!this.#getToken) {
        const err = new ConfabError("token_expired", "the token expired; call setToken() with a new one");
        this.#emitError(err);
        this.#stayOffline(err, detail);
        return;
      }
      delay = conn.live && now - conn.liveAt > 2000 ? 0 : this.#nextBackoff();
    } else if (code === 4002) {
      delay = stable ? 0 : this.#nextBackoff();
    } else if (code === 1008) {
      this.#emitError(new ConfabError("policy", "the server closed the connection for abusing its limits (1008)"));
      delay = Math.max(this.#o.policyBackoffMinMs, this.#nextBackoff());
    } else {
      if (code === 1002 || code === 1007 || code === 1009 || code === 1011) {
        this.#emitError(new ConfabError("protocol", `the server closed the connection (${code} ${info.reason || ""})`.trim()));
      }
      if (!conn.opened && this.#token) this.#probing = this.#probeAuth().finally(() => { this.#probing = null; });
      delay = this.#nextBackoff();
    }
    this.#scheduleReconnect(delay, detail);
  }

  /** After a failed handshake: was it the token? (Browsers do not show the HTTP status.) */
  async #probeAuth() {
    try {
      await requestJson(this.#base, "GET", "/api/me", { token: this.#token, timeoutMs: 5000 });
    } catch (err) {
      // The next attempt gets a new token from getToken, or stops with `token_expired`.
      if (err.status === 401) this.#needFreshToken = true;
    }
  }

  #nextBackoff() {
    const cap = Math.min(this.#o.backoffMaxMs, this.#o.backoffBaseMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    return Math.floor(Math.random() * cap);
  }

  #scheduleReconnect(delay, detail = {}) {
    if (this.#closed) return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#openSocket(), delay);
    this.#setState("offline", { ...detail, retryInMs: delay });
  }

  #stayOffline(err, detail = {}) {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#setState("offline", { ...detail, retryInMs: null, error: err });
  }

  #checkAlive(conn) {
    if (conn.pinging) return;
    conn.pinging = true;
    this.#request("ping", undefined, { internal: true, conn, timeoutMs: this.#o.pingTimeoutMs }).then(
      () => { conn.pinging = false; },
      (err) => {
        conn.pinging = false;
        if (err.code === "timeout" && this.#conn === conn) {
          this.#onClosed(conn, { code: CLOSE_LOCAL, reason: "no answer to ping" });
        }
      },
    );
  }

  // ---- internals: frames -----------------------------------------------------------------

  #onFrame(conn, raw) {
    this.#lastFrameAt = Date.now();
    if (typeof raw !== "string") return;
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      this.#emitError(new ConfabError("protocol", "the server sent a frame that is not JSON"));
      return;
    }
    const d = (f && f.data) || {};
    switch (f && f.event) {
      case "hello": return this.#onHello(conn, d);
      case "ack":
      case "error": return this.#onAnswer(f);
      case "receive_message":
        if (d.message) this.#applyChange(d.message.room_id, { seq: d.message.id, kind: "message", message: d.message }, true);
        return;
      case "message_updated":
        if (d.message) this.#applyChange(d.message.room_id, { seq: d.seq, kind: "updated", message: d.message }, true);
        return;
      case "message_deleted":
        if (d.message) this.#applyChange(d.message.room_id, { seq: d.seq, kind: "deleted", message: d.message }, true);
        return;
      case "message_read":
        this.#em.emit("receipt", { kind: "read", room_id: d.room_id, user_id: d.user_id, message_id: d.message_id, read_at: d.read_at });
        return;
      case "message_delivered":
        for (const r of d.receipts || []) {
          this.#em.emit("receipt", { kind: "delivered", room_id: d.room_id, user_id: r.user_id, message_id: r.message_id });
        }
        return;
      case "typing":
        this.#em.emit("typing", { room_id: d.room_id, user_id: d.user_id, state: d.state });
        return;
      case "presence":
        this.#em.emit("presence", { user_id: d.user_id, status: d.status, last_seen: d.last_seen ?? null });
        return;
      case "room_added": {
        if (d.room) this.#addRoom(d.room, true);
        return;
      }
      case "room_removed":
        if (this.#rooms.has(d.room_id) || this.#cursors.has(d.room_id)) {
          this.#forgetRoom(d.room_id);
          this.#em.emit("room", { type: "room_removed", room_id: d.room_id, live: true });
        }
        return;
      case "member_joined":
        this.#em.emit("room", { type: "member_joined", room_id: d.room_id, member: d.member, live: true });
        return;
      case "member_left":
        this.#em.emit("room", { type: "member_left", room_id: d.room_id, user_id: d.user_id, live: true });
        return;
      default:
        // An event this SDK does not know yet (a newer server): ignored.
    }
  }

  #onHello(conn, data) {
    if (!data || !data.user) return;
    if (this.#user && data.user.id !== this.#user.id) {
      this.#emitError(new ConfabError("unauthorized", `the token is for ${data.user.id}, not ${this.#user.id}; create a new client`));
      this.close();
      return;
    }
    conn.hello = data;
    this.#user = data.user;
    this.#limits = data.limits || null;
    if (Number.isFinite(data.server_time)) this.#serverOffset = data.server_time - Date.now();
    if (this.#o.persist && !this.#persistLoaded) this.#loadPersisted();
    this.#setState("syncing", { attempt: this.#attempt });
    const every = Math.max(1000, this.#o.keepaliveMs ?? data.heartbeat_ms ?? 30000);
    conn.timers.push(setInterval(() => {
      if (this.#conn === conn && Date.now() - this.#lastFrameAt >= every) this.#checkAlive(conn);
    }, every));
    this.#catchUp(conn).catch((err) => {
      if (this.#conn !== conn) return;
      this.#emitError(err);
      this.#onClosed(conn, { code: CLOSE_LOCAL, reason: `catch-up failed: ${err.message}` });
    });
  }

  #onAnswer(f) {
    const e = f.ref != null ? this.#inflight.get(f.ref) : undefined;
    if (!e) {
      if (f.event === "error" && f.ref == null) {
        this.#emitError(ConfabError.fromWire(f.data));
      }
      return;
    }
    this.#inflight.delete(f.ref);
    if (f.event === "ack") this.#settle(e, null, f.data ?? {});
    else this.#settle(e, ConfabError.fromWire(f.data, { event: e.event }));
  }

  // ---- internals: requests ---------------------------------------------------------------

  #request(event, data, opts = {}) {
    if (this.#closed) return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => {
      const e = {
        event, data, resolve, reject, ref: null, conn: null, done: false,
        internal: !!opts.internal,
        retryable: opts.retryable ?? RETRYABLE.has(event),
        timer: null,
      };
      const ms = opts.timeoutMs ?? this.#o.requestTimeoutMs;
      e.timer = setTimeout(() => {
        if (e.ref) this.#inflight.delete(e.ref);
        this.#waiting = this.#waiting.filter((w) => w !== e);
        this.#settle(e, new ConfabError("timeout", `${event}: no answer within ${ms} ms`, { event }));
      }, ms);
      if (e.internal) {
        if (!this.#transmit(e, opts.conn)) {
          this.#settle(e, new ConfabError("disconnected", "not connected", { event }));
        }
      } else if (this.#state === "live" && this.#transmit(e, this.#conn)) {
        // sent
      } else {
        this.#waiting.push(e);
      }
    });
  }

  #transmit(e, conn) {
    if (!conn || conn !== this.#conn || !conn.ws || conn.ws.readyState !== OPEN) return false;
    const ref = `r${(++this.#refSeq).toString(36)}`;
    const frame = { event: e.event, ref };
    if (e.data !== undefined) frame.data = e.data;
    try {
      conn.ws.send(JSON.stringify(frame));
    } catch {
      return false;
    }
    e.ref = ref;
    e.conn = conn;
    this.#inflight.set(ref, e);
    return true;
  }

  #settle(e, err, value) {
    if (e.done) return;
    e.done = true;
    clearTimeout(e.timer);
    if (err) e.reject(err);
    else e.resolve(value);
  }

  #flushWaiting() {
    const list = this.#waiting;
    this.#waiting = [];
    for (let i = 0; i < list.length; i++) {
      const e = list[i];
      if (e.done) continue;
      if (!this.#transmit(e, this.#conn)) {
        this.#waiting = list.slice(i).filter((w) => !w.done).concat(this.#waiting);
        return;
      }
    }
  }

  // ---- internals: catch-up ---------------------------------------------------------------

  /** The cursor for a room we have no seq for: changes since our last live session began. */
  #fallbackCursor(conn) {
    const t = this.#since != null ? this.#since - this.#o.catchUpMarginMs : conn.hello.server_time;
    return previousId(idAtTime(t));
  }

  async #catchUp(conn) {
    const listed = await this.#request("list_rooms", undefined, { internal: true, conn });
    if (this.#conn !== conn) return;
    const ids = new Set();
    for (const room of listed.rooms || []) {
      ids.add(room.id);
      this.#addRoom(room, false);
    }
    for (const id of [...this.#rooms.keys()]) {
      if (!ids.has(id)) {
        this.#forgetRoom(id);
        this.#em.emit("room", { type: "room_removed", room_id: id, live: false });
      }
    }
    for (const id of [...this.#cursors.keys()]) if (!ids.has(id)) this.#forgetRoom(id);

    const fallback = this.#fallbackCursor(conn);
    const cursors = {};
    for (const id of ids) cursors[id] = this.#cursors.get(id) ?? fallback;
    await this.#syncPages(conn, cursors, false);
    if (this.#conn !== conn) return;
    this.#goLive(conn);
  }

  /** Pages `sync` until every room is done (`live` on a ?sync=1 connection). */
  async #syncPages(conn, cursors, live) {
    for (;;) {
      const ans = await this.#request("sync", { rooms: cursors, limit: this.#o.syncLimit },
        { internal: true, conn, timeoutMs: this.#o.syncTimeoutMs });
      if (this.#conn !== conn) return;
      let more = false;
      for (const [roomId, page] of Object.entries(ans.rooms || {})) {
        for (const ch of page.changes || []) this.#applyChange(roomId, ch, false);
        const last = page.changes?.length ? page.changes[page.changes.length - 1].seq : null;
        if (last) cursors[roomId] = maxId(cursors[roomId], last);
        if (page.has_more) more = true;
      }
      for (const id of ans.missing || []) {
        delete cursors[id];
        if (this.#rooms.has(id)) {
          this.#forgetRoom(id);
          this.#em.emit("room", { type: "room_removed", room_id: id, live: false });
        } else {
          this.#forgetRoom(id);
        }
      }
      if (live ? !more : ans.live) return;
    }
  }

  #goLive(conn) {
    conn.live = true;
    conn.liveAt = Date.now();
    this.#since = conn.hello.server_time;
    this.#savePersistedSoon(false);
    this.#setState("live", { attempt: this.#attempt });
    for (const w of this.#liveWaiters) {
      clearTimeout(w.timer);
      w.resolve();
    }
    this.#liveWaiters.clear();
    this.#flushWaiting();
    this.#flushDelivered();
    this.#pump();
    this.#catchUpLateRooms(conn).catch((err) => {
      if (this.#conn === conn && err.code !== "disconnected") this.#emitError(err);
    });
  }

  /**
   * Rooms joined while this connection was catching up got no `room_added` (a catching-up
   * connection receives no events): find them once live.
   */
  async #catchUpLateRooms(conn) {
    const listed = await this.#request("list_rooms", undefined, { internal: true, conn });
    if (this.#conn !== conn) return;
    const late = (listed.rooms || []).filter((r) => !this.#rooms.has(r.id));
    for (const room of late) this.#addRoom(room, false);
    this.#startLate(conn, late.map((r) => r.id));
  }

  /**
   * Catches up rooms that became ours while this connection was catching up: reads their
   * changes since this connection's hello with a plain `sync`, holding back their live events
   * meanwhile, then applies the held ones, so they too arrive once and in order.
   */
  #startLate(conn, roomIds) {
    const todo = roomIds.filter((id) => !conn.lateStarted.has(id) && !this.#late.has(id));
    if (!todo.length) return;
    const fallback = previousId(idAtTime(conn.hello.server_time - this.#o.catchUpMarginMs));
    const cursors = {};
    for (const id of todo) {
      conn.lateStarted.add(id);
      this.#late.set(id, []);
      cursors[id] = this.#cursors.get(id) ?? fallback;
    }
    this.#syncPages(conn, cursors, true).then(() => {
      if (this.#conn !== conn) return;
      for (const id of todo) {
        const held = this.#late.get(id) || [];
        this.#late.delete(id);
        for (const ch of held) this.#applyChange(id, ch, true);
      }
    }, (err) => {
      if (this.#conn !== conn) return;
      // Applying the held events would skip what the failed read should have brought:
      // reconnect instead, the catch-up of the new connection covers these rooms.
      this.#emitError(err);
      this.#onClosed(conn, { code: CLOSE_LOCAL, reason: "catch-up of new rooms failed" });
    });
  }

  #addRoom(room, live) {
    const known = this.#rooms.has(room.id);
    this.#rooms.set(room.id, room);
    if (!known) this.#em.emit("room", { type: "room_added", room_id: room.id, room, live });
  }

  /** One change of a room, live or caught up: de-duplicated, then emitted as `message`. */
  #applyChange(roomId, ch, live) {
    const msg = ch && ch.message;
    const seq = ch && ch.seq;
    if (!msg || !isId(seq) || !isId(roomId)) return;
    if (live) {
      const held = this.#late.get(roomId);
      if (held) {
        held.push(ch);
        return;
      }
      const conn = this.#conn;
      if (!this.#rooms.has(roomId) && conn?.live && !conn.lateStarted.has(roomId)) {
        // An event of a room we never heard of: joined while we were catching up.
        this.#startLate(conn, [roomId]);
        this.#late.get(roomId)?.push(ch);
        return;
      }
    }
    const cursor = this.#cursors.get(roomId);
    // Changes of a room arrive in seq order, so anything at or below the cursor was seen.
    if (cursor != null && compareIds(seq, cursor) <= 0) {
      this.#stats.duplicates++;
      return;
    }
    let seen = this.#seen.get(roomId);
    if (!seen) {
      seen = new Map();
      this.#seen.set(roomId, seen);
    }
    const prev = seen.get(msg.id);
    if (prev != null && compareIds(prev, seq) >= 0) {
      this.#stats.duplicates++;
      return;
    }
    seen.delete(msg.id);
    seen.set(msg.id, seq);
    if (seen.size > this.#o.dedupeWindow) seen.delete(seen.keys().next().value);
    this.#cursors.set(roomId, seq);
    this.#savePersistedSoon(false);
    const kind = ch.kind === "message" ? "new" : ch.kind;
    const own = !!this.#user && msg.sender_id === this.#user.id;
    if (kind === "new" && !own) this.#queueDelivered(roomId, msg.id);
    this.#em.emit("message", { kind, room_id: roomId, message: msg, seq, live, own });
  }

  #forgetRoom(id) {
    this.#rooms.delete(id);
    this.#cursors.delete(id);
    this.#seen.delete(id);
    this.#late.delete(id);
    this.#deliverQueue.delete(id);
    this.#deliverSent.delete(id);
    this.#typingSent.delete(id);
  }

  // ---- internals: receipts ---------------------------------------------------------------

  #queueDelivered(roomId, messageId) {
    if (!this.#o.autoDelivered) return;
    this.#deliverQueue.set(roomId, maxId(this.#deliverQueue.get(roomId), messageId));
    if (!this.#deliverTimer) {
      this.#deliverTimer = setTimeout(() => {
        this.#deliverTimer = null;
        this.#flushDelivered();
      }, this.#o.deliveredDelayMs);
    }
  }

  #flushDelivered() {
    if (this.#state !== "live" || this.#deliverTimer) return;
    for (const [room, id] of this.#deliverQueue) {
      this.#deliverQueue.delete(room);
      const sent = this.#deliverSent.get(room);
      if (sent != null && compareIds(id, sent) <= 0) continue;
      this.#deliverSent.set(room, id);
      this.#request("mark_delivered", { room_id: room, message_id: id }).catch((err) => {
        if (this.#deliverSent.get(room) === id) {
          if (sent == null) this.#deliverSent.delete(room);
          else this.#deliverSent.set(room, sent);
        }
        if (!["not_found", "closed", "timeout", "disconnected"].includes(err.code)) this.#emitError(err);
      });
    }
  }

  // ---- internals: outbox -----------------------------------------------------------------

  async #pump() {
    if (this.#pumping) return;
    this.#pumping = true;
    let failures = 0;
    try {
      while (this.#outbox.length && this.#state === "live" && !this.#closed) {
        const item = this.#outbox[0];
        const conn = this.#conn;
        const data = {
          room_id: item.room_id, client_msg_id: item.client_msg_id, type: item.type, content: item.content,
        };
        if (item.file_id != null) data.file_id = item.file_id;
        item.attempts += 1;
        item.inFlight = true;
        let ack;
        try {
          ack = await this.#request("send_message", data, { internal: true, conn, retryable: false });
        } catch (err) {
          item.inFlight = false;
          if (this.#closed || err.code === "disconnected" || err.code === "closed") break;
          if (TRANSIENT.has(err.code)) {
            const wait = err.code === "rate_limited"
              ? (err.retryAfterMs ?? 1000)
              : Math.floor(Math.random() * Math.min(this.#o.backoffMaxMs, 500 * 2 ** Math.min(failures++, 10)));
            await sleep(wait);
            continue;
          }
          if (this.#outbox[0] === item) this.#outbox.shift();
          this.#savePersistedSoon(true);
          this.#finishPending(item, null, err);
          continue;
        }
        item.inFlight = false;
        failures = 0;
        if (this.#outbox[0] === item) this.#outbox.shift();
        this.#savePersistedSoon(true);
        this.#finishPending(item, ack, null);
      }
    } finally {
      this.#pumping = false;
    }
    if (this.#outbox.length && this.#state === "live" && !this.#closed) queueMicrotask(() => this.#pump());
  }

  #finishPending(item, ack, err) {
    item.status = err ? "failed" : "sent";
    const cb = this.#callbacks.get(item.client_msg_id);
    this.#callbacks.delete(item.client_msg_id);
    if (err) {
      this.#em.emit("pending", { status: "failed", pending: publicPending(item), error: err });
      cb?.reject(err);
    } else {
      this.#em.emit("pending", {
        status: "sent", pending: publicPending(item), message: ack.message, duplicate: !!ack.duplicate,
      });
      cb?.resolve(ack.message);
    }
  }

  // ---- internals: persistence ------------------------------------------------------------

  #storage() {
    if (this.#o.storage !== undefined) return this.#o.storage;
    try {
      return globalThis.localStorage ?? null;
    } catch {
      return null;
    }
  }

  #key() {
    if (this.#o.storageKey) return this.#o.storageKey;
    return this.#user ? `confab:v1:${this.#base}:${this.#user.id}` : null;
  }

  #loadPersisted() {
    this.#persistLoaded = true;
    const store = this.#storage();
    const key = this.#key();
    if (!store || !key) return;
    let saved;
    try {
      saved = JSON.parse(store.getItem(key) || "null");
    } catch {
      saved = null;
    }
    if (!saved || typeof saved !== "object") return;
    if (this.#o.persist.cursors) this.#restoreSyncState(saved);
    if (this.#o.persist.outbox && Array.isArray(saved.outbox)) {
      const mine = new Set(this.#outbox.map((p) => p.client_msg_id));
      const restored = [];
      for (const p of saved.outbox) {
        if (!p || typeof p.client_msg_id !== "string" || mine.has(p.client_msg_id) || !isId(p.room_id)) continue;
        restored.push({
          client_msg_id: p.client_msg_id, room_id: p.room_id, type: p.type || "text",
          content: typeof p.content === "string" ? p.content : "", file_id: p.file_id ?? undefined,
          status: "sending", created_at: p.created_at || Date.now(), attempts: p.attempts || 0,
        });
      }
      this.#outbox = restored.concat(this.#outbox);
      for (const p of restored) this.#em.emit("pending", { status: "sending", pending: publicPending(p), restored: true });
    }
  }

  #savePersistedSoon(now) {
    if (!this.#o.persist || !this.#persistLoaded) return;
    if (now && this.#o.persist.outbox) {
      clearTimeout(this.#persistTimer);
      this.#persistTimer = null;
      this.#savePersisted();
      return;
    }
    if (!this.#persistTimer) {
      this.#persistTimer = setTimeout(() => {
        this.#persistTimer = null;
        this.#savePersisted();
      }, 500);
    }
  }

  #savePersisted() {
    const store = this.#storage();
    const key = this.#key();
    if (!store || !key || !this.#o.persist) return;
    const value = {};
    if (this.#o.persist.cursors) Object.assign(value, this.getSyncState());
    if (this.#o.persist.outbox) {
      value.outbox = this.#outbox.map(({ client_msg_id, room_id, type, content, file_id, created_at, attempts }) =>
        ({ client_msg_id, room_id, type, content, file_id, created_at, attempts }));
    }
    try {
      store.setItem(key, JSON.stringify(value));
    } catch (cause) {
      this.#emitError(new ConfabError("internal", `could not persist the outbox: ${cause?.message || cause}`, { cause }));
    }
  }
}
