// Tests of the Confab JavaScript SDK against a real Confab server.
//
// Run from the repository root:
//
//   node --test web/sdk/test/
//
// Node 20 has a global WebSocket only behind --experimental-websocket. Without it, this file
// runs itself again in a child process with the flag (one outer test that reports the child's
// output); to run the tests directly:
//
//   node --experimental-websocket --test web/sdk/test/
//
// The server is target/release/confab (build it with `cargo build --release`; CONFAB_BIN
// overrides the path). Each run starts one server on 127.0.0.1:0 with a temporary data dir,
// mints tokens with `confab token`, and talks to it through the SDK. If the binary is missing
// (being rebuilt), the tests wait for it for up to five minutes.

import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, execFile } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { ConfabClient, ConfabError, compareIds, idAtTime, timeOfId, uuidv7 } from "../confab.js";

const execFileP = promisify(execFile);
const BIN = process.env.CONFAB_BIN || fileURLToPath(new URL("../../../target/release/confab", import.meta.url));

if (typeof WebSocket === "undefined") {
  test("SDK tests (run again with --experimental-websocket)", () => {
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT; // run as a test runner of its own, not as a runner's child
    const r = spawnSync(process.execPath,
      ["--experimental-websocket", "--test", "--test-reporter=tap", fileURLToPath(import.meta.url)],
      { encoding: "utf8", timeout: 10 * 60 * 1000, env });
    const out = `${r.stdout || ""}\n${r.stderr || ""}`;
    assert.equal(r.status, 0, `the SDK tests failed:\n${out}`);
    const passed = /^# pass (\d+)/m.exec(out);
    assert.ok(passed && Number(passed[1]) > 1 && /^# fail 0/m.test(out), `unexpected output:\n${out}`);
    for (const l of out.split("\n")) if (/^(not )?ok \d+ /.test(l)) console.log(l);
  });
} else {
  defineTests();
}

// ---- the server ---------------------------------------------------------------------------

const RELAXED = {
  CONFAB_RATE_LIMITS__MESSAGES_PER_SEC: "100000",
  CONFAB_RATE_LIMITS__MESSAGES_BURST: "100000",
  CONFAB_RATE_LIMITS__USER_MESSAGES_PER_SEC: "100000",
  CONFAB_RATE_LIMITS__USER_MESSAGES_BURST: "100000",
  CONFAB_RATE_LIMITS__TYPING_PER_SEC: "100000",
  CONFAB_RATE_LIMITS__TYPING_BURST: "100000",
  CONFAB_RATE_LIMITS__JOINS_PER_SEC: "100000",
  CONFAB_RATE_LIMITS__JOINS_BURST: "100000",
  CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP: "100000",
  CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP: "100000",
  CONFAB_RATE_LIMITS__UPLOADS_PER_SEC: "100000",
  CONFAB_RATE_LIMITS__UPLOADS_BURST: "100000",
  CONFAB_RATE_LIMITS__ABUSE_STRIKES: "100000",
  CONFAB_LIMITS__MAX_CONNECTIONS_PER_USER: "100000",
  CONFAB_PRESENCE__OFFLINE_GRACE_SECS: "1",
  CONFAB_FILES__MIN_FREE_DISK_BYTES: "0",
};

const server = { proc: null, dir: null, base: null, output: [] };

async function waitForBinary() {
  const deadline = Date.now() + 5 * 60 * 1000;
  for (;;) {
    try {
      const st = statSync(BIN);
      // A file still being linked changes size; wait until it is stable for a moment.
      await sleep(300);
      if (statSync(BIN).size === st.size && st.size > 0) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(`${BIN} does not exist: run \`cargo build --release\``);
    await sleep(2000);
  }
}

function startServer() {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, ...RELAXED, NO_COLOR: "1" };
    delete env.RUST_LOG;
    const proc = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", join(server.dir, "data")],
      { cwd: server.dir, env, stdio: ["ignore", "pipe", "pipe"] });
    server.proc = proc;
    // Never leave a server behind, whatever way this process ends.
    process.once("exit", () => proc.kill("SIGKILL"));
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${server.output.join("")}`)), 30000);
    const onData = (chunk) => {
      const s = chunk.toString();
      server.output.push(s);
      if (server.output.length > 2000) server.output.splice(0, 1000);
      const m = /listening on (http:\/\/[0-9.:]+)/.exec(server.output.join(""));
      if (m && !server.base) {
        server.base = m[1];
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.on("error", (e) => { clearTimeout(timer); reject(e); });
    proc.on("exit", (code) => {
      if (!server.base) {
        clearTimeout(timer);
        reject(new Error(`server exited with ${code}:\n${server.output.join("")}`));
      }
    });
  });
}

async function mint(user, ttl) {
  const args = ["token", "--data-dir", join(server.dir, "data"), "--user", user, "--name", user.toUpperCase()];
  if (ttl) args.push("--ttl", ttl);
  const { stdout } = await execFileP(BIN, args, { cwd: server.dir, env: { ...process.env, ...RELAXED } });
  const token = stdout.trim();
  assert.equal(token.split(".").length, 3, `not a JWT: ${token}`);
  return token;
}

// ---- helpers ------------------------------------------------------------------------------

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

let uniq = 0;
function name(prefix) {
  uniq += 1;
  return `${prefix}${process.pid % 1000}x${uniq}`;
}

async function waitFor(pred, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * A WebSocket for the SDK whose "network" the test controls: down() drops every open socket
 * (as a lost network would: close code 1006) and makes new ones fail until up(); `tap` sees
 * every incoming frame and returns the frames to deliver instead (to drop or duplicate them).
 */
function makeNet() {
  const net = { isDown: false, sockets: new Set(), tap: null, opened: 0 };
  class TestSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocol = "";
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this._dead = false;
      this._ws = null;
      net.sockets.add(this);
      if (net.isDown) {
        setTimeout(() => this._fail(), 5);
        return;
      }
      const ws = new WebSocket(url, protocols);
      this._ws = ws;
      ws.onopen = (e) => {
        if (this._dead) return;
        net.opened += 1;
        this.protocol = ws.protocol;
        this.onopen?.(e);
      };
      ws.onmessage = (e) => {
        if (this._dead) return;
        const frames = net.tap ? net.tap(e.data, this) : [e.data];
        for (const data of frames) if (!this._dead) this.onmessage?.({ data });
      };
      ws.onerror = (e) => {
        if (!this._dead) this.onerror?.(e);
      };
      ws.onclose = (e) => {
        if (this._dead) return;
        this._dead = true;
        net.sockets.delete(this);
        this.onclose?.({ code: e.code, reason: e.reason, wasClean: e.wasClean });
      };
    }

    get readyState() {
      if (this._dead) return 3;
      return this._ws ? this._ws.readyState : 0;
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("socket not open");
      this._ws.send(data);
    }

    close(code, reason) {
      if (this._dead || !this._ws) {
        this._dead = true;
        return;
      }
      try {
        this._ws.close(code, reason);
      } catch {
        this._ws.close();
      }
    }

    _fail() {
      if (this._dead) return;
      this._dead = true;
      net.sockets.delete(this);
      this.onerror?.({ type: "error" });
      this.onclose?.({ code: 1006, reason: "", wasClean: false });
    }

    /** Loses the connection: the server sees the socket go, the SDK sees 1006. */
    drop() {
      if (this._dead) return;
      this._dead = true;
      net.sockets.delete(this);
      try {
        this._ws?.close();
      } catch {
        // closing already
      }
      setTimeout(() => this.onclose?.({ code: 1006, reason: "", wasClean: false }), 0);
    }
  }
  net.WebSocket = TestSocket;
  net.down = () => {
    net.isDown = true;
    for (const s of [...net.sockets]) s.drop();
  };
  net.up = () => {
    net.isDown = false;
  };
  return net;
}

const clients = [];

/** A client for `user` with its own test network, recording everything it emits. */
function makeClient(user, opts = {}) {
  const net = opts.net || makeNet();
  const rec = { message: [], pending: [], connection: [], receipt: [], typing: [], presence: [], room: [], error: [] };
  const client = new ConfabClient({
    url: server.base,
    getToken: () => mint(user),
    WebSocket: net.WebSocket,
    backoffBaseMs: 50,
    backoffMaxMs: 400,
    ...opts,
  });
  for (const ev of Object.keys(rec)) client.on(ev, (p) => rec[ev].push(p));
  clients.push(client);
  return { client, net, rec, user };
}

function texts(rec, roomId, kind = "new") {
  return rec.message.filter((m) => m.room_id === roomId && m.kind === kind).map((m) => m.message.content);
}

function defineTests() {
  before(async () => {
    await waitForBinary();
    server.dir = mkdtempSync(join(tmpdir(), "confab-sdk-"));
    let lastErr;
    for (let i = 0; i < 5; i++) {
      try {
        await startServer();
        return;
      } catch (e) {
        lastErr = e;
        server.output = [];
        await sleep(2000); // the binary may be in the middle of being replaced
      }
    }
    throw lastErr;
  });

  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
  });

  after(() => {
    server.proc?.kill("SIGKILL");
    if (server.dir && existsSync(server.dir)) rmSync(server.dir, { recursive: true, force: true });
  });

  /** alice creates a public room, bob joins; both live. */
  async function pair(aliceOpts = {}, bobOpts = {}) {
    const a = makeClient(name("alice"), aliceOpts);
    const b = makeClient(name("bob"), bobOpts);
    await Promise.all([a.client.whenLive({ timeoutMs: 15000 }), b.client.whenLive({ timeoutMs: 15000 })]);
    const room = await a.client.createRoom({ name: name("room"), visibility: "public" });
    await b.client.joinRoom(room.id);
    return { a, b, room };
  }

  test("connects: hello, catch-up, live; a new client gets rooms but not old messages as events", async () => {
    const seed = makeClient(name("seed"));
    await seed.client.whenLive({ timeoutMs: 15000 });
    const room = await seed.client.createRoom({ name: name("old"), visibility: "public" });
    await seed.client.sendMessage(room.id, "before carol");

    const user = name("carol");
    const c = makeClient(user);
    await c.client.whenLive({ timeoutMs: 15000 });
    assert.deepEqual(c.rec.connection.map((e) => e.state), ["connecting", "syncing", "live"]);
    assert.equal(c.client.state, "live");
    assert.equal(c.client.user.id, user);
    assert.equal(c.client.user.name, user.toUpperCase());
    assert.ok(c.client.limits.max_message_bytes > 0);

    await c.client.joinRoom(room.id);
    await waitFor(() => c.rec.room.find((e) => e.type === "room_added" && e.room_id === room.id), "room_added");
    assert.ok(c.client.rooms.some((r) => r.id === room.id));
    const page = await c.client.history(room.id);
    assert.deepEqual(page.messages.map((m) => m.content), ["before carol"]);
    assert.equal(typeof page.messages[0].id, "string");
    await sleep(300);
    assert.equal(c.rec.message.length, 0, "history is not replayed as events");
    const pong = await c.client.ping();
    assert.ok(pong.server_time > 0 && pong.rtt_ms >= 0);
  });

  test("send and receive between two clients", async () => {
    const { a, b, room } = await pair();
    const sent = await a.client.sendMessage(room.id, "hello bob");
    assert.equal(sent.content, "hello bob");
    assert.equal(sent.room_id, room.id);
    assert.equal(typeof sent.id, "string");

    const got = await waitFor(() => b.rec.message.find((m) => m.message.id === sent.id), "bob receives");
    assert.equal(got.kind, "new");
    assert.equal(got.live, true);
    assert.equal(got.own, false);
    assert.equal(got.seq, sent.id);
    const own = await waitFor(() => a.rec.message.find((m) => m.message.id === sent.id), "alice sees her own");
    assert.equal(own.own, true);
    assert.deepEqual(a.rec.pending.map((p) => p.status), ["sending", "sent"]);
    assert.equal(a.rec.pending[0].pending.client_msg_id, sent.client_msg_id);
    assert.equal(a.rec.pending[1].message.id, sent.id);

    // Edits and deletes arrive as the same `message` event with their kind.
    const edited = await b.client.sendMessage(room.id, "typo");
    await a.client.history(room.id); // a round trip so the broadcast is surely out
    await b.client.editMessage(room.id, edited.id, "fixed");
    await b.client.deleteMessage(room.id, sent.id).then(
      () => assert.fail("bob may not delete alice's message"),
      (e) => { assert.ok(e instanceof ConfabError); assert.equal(e.code, "forbidden"); },
    );
    await a.client.deleteMessage(room.id, sent.id);
    await waitFor(() => texts(a.rec, room.id, "updated").includes("fixed"), "updated event");
    const del = await waitFor(() => a.rec.message.find((m) => m.kind === "deleted" && m.message.id === sent.id), "deleted event");
    assert.equal(del.message.content, "");
    assert.ok(compareIds(del.seq, sent.id) > 0);

    // Receipts: bob's client marks delivered by itself; read is explicit.
    await waitFor(() => a.rec.receipt.find((r) => r.kind === "delivered" && r.user_id === b.user), "delivered receipt");
    await b.client.markRead(room.id, sent.id);
    const read = await waitFor(() => a.rec.receipt.find((r) => r.kind === "read" && r.user_id === b.user), "read receipt");
    assert.equal(read.message_id, sent.id);
    const receipts = await a.client.messageReceipts(room.id, edited.id);
    assert.equal(receipts.message_id, edited.id);
  });

  test("offline outbox: messages sent while offline are delivered once, in order, after reconnecting", async () => {
    const { a, b, room } = await pair();
    a.net.down();
    await waitFor(() => a.client.state === "offline", "alice offline");
    const promises = ["one", "two", "three"].map((t) => a.client.sendMessage(room.id, t));
    assert.deepEqual(a.client.pending.map((p) => p.content), ["one", "two", "three"]);
    assert.ok(a.client.pending.every((p) => p.status === "sending"));
    const history = a.client.history(room.id, { limit: 10 }); // waits for the connection
    await sleep(600);
    assert.deepEqual(texts(b.rec, room.id), [], "nothing leaves while offline");
    const offline = a.rec.connection.filter((e) => e.state === "offline");
    assert.ok(offline.length >= 1 && offline.every((e) => e.retryInMs == null || e.retryInMs <= 400));

    a.net.up();
    const stored = await Promise.all(promises);
    assert.deepEqual(stored.map((m) => m.content), ["one", "two", "three"]);
    assert.ok(compareIds(stored[0].id, stored[1].id) < 0 && compareIds(stored[1].id, stored[2].id) < 0);
    await waitFor(() => texts(b.rec, room.id).length === 3, "bob gets 3");
    // Queued before the outbox flush, so answered before the three are stored.
    assert.deepEqual((await history).messages, []);
    await sleep(500);
    assert.deepEqual(texts(b.rec, room.id), ["one", "two", "three"]);
    assert.deepEqual(texts(a.rec, room.id), ["one", "two", "three"]);
    assert.equal(a.client.pending.length, 0);
    const page = await b.client.history(room.id, { limit: 50 });
    assert.deepEqual(page.messages.map((m) => m.content).reverse(), ["one", "two", "three"]);
  });

  test("outbox: an ack lost with the connection is retried and stored once (duplicate: true)", async () => {
    const { a, b, room } = await pair();
    let blackhole = false;
    a.net.tap = (data) => {
      if (blackhole) return [];
      const f = JSON.parse(data);
      if (f.event === "ack" && f.data?.message?.content === "lost ack") {
        blackhole = true; // this ack and everything after it never arrives
        setTimeout(() => a.net.down(), 50);
        return [];
      }
      return [data];
    };
    const p = a.client.sendMessage(room.id, "lost ack");
    await waitFor(() => a.net.isDown, "connection lost");
    a.net.tap = null;
    await sleep(200);
    a.net.up();
    const msg = await p;
    assert.equal(msg.content, "lost ack");
    const sent = a.rec.pending.find((e) => e.status === "sent");
    assert.equal(sent.duplicate, true, "the retry was answered with the original ack");
    await waitFor(() => texts(b.rec, room.id).length === 1, "bob gets it");
    await waitFor(() => texts(a.rec, room.id).length === 1, "alice gets it");
    await sleep(400);
    assert.deepEqual(texts(b.rec, room.id), ["lost ack"]);
    assert.deepEqual(texts(a.rec, room.id), ["lost ack"]);
    const page = await b.client.history(room.id);
    assert.equal(page.messages.length, 1, "stored once");
  });

  test("catch-up: changes made while away arrive once, in order, before live", async () => {
    const { a, b, room } = await pair();
    await a.client.sendMessage(room.id, "m0");
    await waitFor(() => texts(b.rec, room.id).length === 1, "bob live");
    b.net.down();
    await waitFor(() => b.client.state === "offline", "bob offline");
    const sent = [];
    for (let i = 1; i <= 5; i++) sent.push(await a.client.sendMessage(room.id, `m${i}`));
    await a.client.editMessage(room.id, sent[1].id, "m2 edited");
    await a.client.deleteMessage(room.id, sent[2].id);
    const states = b.rec.connection.length;
    b.net.up();
    b.client.reconnect(); // as the browser `online` event does
    await b.client.whenLive({ timeoutMs: 15000 });
    assert.deepEqual(b.rec.connection.slice(states).map((e) => e.state).filter((s) => s !== "offline"),
      ["connecting", "syncing", "live"]);
    await sleep(500);
    const news = b.rec.message.filter((m) => m.room_id === room.id && m.kind === "new");
    assert.deepEqual(news.map((m) => m.message.id), [sentIdOf(b, "m0"), ...sent.map((m) => m.id)]);
    for (let i = 1; i < news.length; i++) assert.ok(compareIds(news[i - 1].message.id, news[i].message.id) < 0);
    assert.ok(news.slice(1).every((m) => m.live === false), "caught up, not live");
    // Catch-up carries messages as they are now, then the changes themselves.
    assert.equal(news[2].message.content, "m2 edited");
    assert.equal(news[3].message.content, "");
    const upd = b.rec.message.filter((m) => m.room_id === room.id && m.kind !== "new");
    assert.deepEqual(upd.map((m) => [m.kind, m.message.id]), [["updated", sent[1].id], ["deleted", sent[2].id]]);
    // Live again: a new message comes through once.
    await a.client.sendMessage(room.id, "after");
    await waitFor(() => texts(b.rec, room.id).includes("after"), "live after catch-up");
    await sleep(300);
    assert.equal(texts(b.rec, room.id).filter((t) => t === "after").length, 1);
    const last = b.rec.message.filter((m) => m.room_id === room.id).at(-1);
    assert.equal(last.live, true);
    // Bob's client told the server what it received (delivered watermark).
    await waitFor(() => a.rec.receipt.some((r) => r.kind === "delivered" && r.user_id === b.user
      && r.message_id === last.message.id), "delivered up to the newest");
  });

  function sentIdOf(c, content) {
    return c.rec.message.find((m) => m.message.content === content).message.id;
  }

  test("rooms joined while offline are caught up too", async () => {
    const { a, b } = await pair();
    b.net.down();
    await waitFor(() => b.client.state === "offline", "bob offline");
    const room = await a.client.createRoom({ name: name("secret"), visibility: "private" });
    await a.client.invite(room.id, b.user);
    await a.client.sendMessage(room.id, "welcome");
    await a.client.sendMessage(room.id, "to the room");
    b.net.up();
    b.client.reconnect();
    await b.client.whenLive({ timeoutMs: 15000 });
    const added = await waitFor(() => b.rec.room.find((e) => e.type === "room_added" && e.room_id === room.id), "room_added");
    assert.equal(added.live, false);
    await waitFor(() => texts(b.rec, room.id).length === 2, "messages of the new room");
    assert.deepEqual(texts(b.rec, room.id), ["welcome", "to the room"]);
    // Leaving while offline is noticed as well.
    b.net.down();
    await waitFor(() => b.client.state === "offline", "bob offline again");
    const members = await a.client.listMembers(room.id);
    assert.ok(members.some((m) => m.user_id === b.user));
    const other = makeClient(b.user);
    await other.client.whenLive({ timeoutMs: 15000 });
    await other.client.leaveRoom(room.id);
    b.net.up();
    b.client.reconnect();
    await waitFor(() => b.rec.room.find((e) => e.type === "room_removed" && e.room_id === room.id), "room_removed");
    assert.ok(!b.client.rooms.some((r) => r.id === room.id));
  });

  for (const hideFromBoth of [false, true]) {
    const what = hideFromBoth ? "known only from its first live message" : "found by the list after going live";
    test(`a room joined during catch-up (${what}) is caught up once, in order`, async () => {
      const { a, b } = await pair();
      b.net.down();
      await waitFor(() => b.client.state === "offline", "bob offline");
      const late = await a.client.createRoom({ name: name("late"), visibility: "private" });
      await a.client.invite(late.id, b.user);
      await a.client.sendMessage(late.id, "l1");
      await a.client.sendMessage(late.id, "l2");
      // Hide the room from list_rooms answers, as if bob had joined it after they were read:
      // the catch-up of the connection does not cover it and no room_added is sent.
      let lists = 0;
      b.net.tap = (data) => {
        const f = JSON.parse(data);
        if (f.event === "ack" && Array.isArray(f.data?.rooms) && (hideFromBoth || lists === 0)) {
          lists += 1;
          f.data.rooms = f.data.rooms.filter((r) => r.id !== late.id);
          return [JSON.stringify(f)];
        }
        return [data];
      };
      b.net.up();
      b.client.reconnect();
      await b.client.whenLive({ timeoutMs: 15000 });
      if (!hideFromBoth) {
        const added = await waitFor(() => b.rec.room.find((e) => e.type === "room_added" && e.room_id === late.id), "room_added");
        assert.equal(added.live, false);
      }
      await a.client.sendMessage(late.id, "l3");
      await waitFor(() => texts(b.rec, late.id).length === 3, "three messages of the late room");
      await a.client.sendMessage(late.id, "l4");
      await waitFor(() => texts(b.rec, late.id).length === 4, "and the next one live");
      await sleep(300);
      assert.deepEqual(texts(b.rec, late.id), ["l1", "l2", "l3", "l4"]);
      const ids = b.rec.message.filter((m) => m.room_id === late.id).map((m) => m.message.id);
      for (let i = 1; i < ids.length; i++) assert.ok(compareIds(ids[i - 1], ids[i]) < 0);
    });
  }

  test("persist: the outbox and cursors survive a new client on the same storage (a reload)", async () => {
    const { a, b, room } = await pair();
    const mem = new Map();
    const storage = {
      getItem: (k) => (mem.has(k) ? mem.get(k) : null),
      setItem: (k, v) => mem.set(k, String(v)),
      removeItem: (k) => mem.delete(k),
    };
    const a1 = makeClient(a.user, { persist: true, storage });
    await a1.client.whenLive({ timeoutMs: 15000 });
    await b.client.sendMessage(room.id, "seen by the first page");
    await waitFor(() => texts(a1.rec, room.id).length === 1, "a1 receives");
    a1.net.down();
    await waitFor(() => a1.client.state === "offline", "a1 offline");
    const lost = a1.client.sendMessage(room.id, "written before the reload");
    const key = `confab:v1:${server.base}:${a.user}`;
    assert.equal(JSON.parse(mem.get(key)).outbox[0].content, "written before the reload");
    a1.client.close();
    await assert.rejects(lost, (e) => e.code === "closed");
    await b.client.sendMessage(room.id, "sent between the pages");

    const a2 = makeClient(a.user, { persist: true, storage });
    await a2.client.whenLive({ timeoutMs: 15000 });
    const restored = await waitFor(() => a2.rec.pending.find((p) => p.restored), "restored pending");
    assert.equal(restored.pending.content, "written before the reload");
    await waitFor(() => a2.rec.pending.some((p) => p.status === "sent"), "sent after reload");
    await waitFor(() => texts(b.rec, room.id).includes("written before the reload"), "bob gets it");
    await sleep(400);
    assert.equal(texts(b.rec, room.id).filter((t) => t === "written before the reload").length, 1);
    assert.deepEqual(texts(a2.rec, room.id), ["sent between the pages", "written before the reload"]);
    assert.deepEqual(JSON.parse(mem.get(key)).outbox, []);
  });

  test("token refresh: after 4001 (token expired) getToken is called and the client reconnects", async () => {
    const user = name("dora");
    let calls = 0;
    const d = makeClient(user, {
      getToken: async () => {
        calls += 1;
        return calls === 1 ? mint(user, "2s") : mint(user);
      },
    });
    await d.client.whenLive({ timeoutMs: 15000 });
    const room = await d.client.createRoom({ name: name("ttl"), visibility: "public" });
    const e = makeClient(name("eve"));
    await e.client.whenLive({ timeoutMs: 15000 });
    await e.client.joinRoom(room.id);
    const closed = await waitFor(() => d.rec.connection.find((c) => c.state === "offline" && c.code === 4001),
      "close 4001", 10000);
    assert.equal(closed.code, 4001);
    await e.client.sendMessage(room.id, "during refresh");
    await waitFor(() => calls >= 2, "getToken called again");
    await waitFor(() => d.client.state === "live", "live again");
    await e.client.sendMessage(room.id, "after refresh");
    await waitFor(() => texts(d.rec, room.id).length === 2, "both messages");
    await sleep(300);
    assert.deepEqual(texts(d.rec, room.id), ["during refresh", "after refresh"]);
    assert.equal(d.rec.error.filter((x) => x.code === "token_expired").length, 0);
    // A client with a fixed token and no getToken stops and says why.
    const fred = name("fred");
    const f = makeClient(fred, { getToken: undefined, token: await mint(fred, "2s") });
    await waitFor(() => f.rec.error.some((x) => x.code === "token_expired"), "token_expired error", 10000);
    assert.equal(f.client.state, "offline");
    assert.equal(f.rec.connection.at(-1).retryInMs, null);
  });

  test("duplicate suppression: repeated and stale frames are dropped by id and seq", async () => {
    const { a, b, room } = await pair();
    const frames = new Map();
    b.net.tap = (data) => {
      const f = JSON.parse(data);
      if (f.event === "receive_message") {
        frames.set(f.data.message.id, data);
        return [data, data]; // every message twice
      }
      if (f.event === "message_updated") {
        // The update, then the older version of the message again.
        return [data, frames.get(f.data.message.id), data].filter(Boolean);
      }
      return [data];
    };
    const m1 = await a.client.sendMessage(room.id, "once");
    const m2 = await a.client.sendMessage(room.id, "twice?");
    await a.client.editMessage(room.id, m1.id, "once, edited");
    await waitFor(() => b.rec.message.some((m) => m.kind === "updated"), "update");
    await sleep(300);
    const seen = b.rec.message.filter((m) => m.room_id === room.id);
    assert.deepEqual(seen.map((m) => [m.kind, m.message.content]),
      [["new", "once"], ["new", "twice?"], ["updated", "once, edited"]]);
    assert.ok(b.client.stats.duplicates >= 4);

    // Sending again with the same client_msg_id is stored once.
    b.net.tap = null;
    const again = await a.client.sendMessage(room.id, "twice?", { clientMsgId: m2.client_msg_id });
    assert.equal(again.id, m2.id);
    assert.equal(a.rec.pending.at(-1).duplicate, true);
    await sleep(300);
    assert.equal(texts(b.rec, room.id).filter((t) => t === "twice?").length, 1);

    // A reconnect replaying from an older cursor (here: a fresh client given the old state)
    // does not repeat what the restored state says was seen.
    const state = b.client.getSyncState();
    assert.equal(state.cursors[room.id], b.rec.message.filter((m) => m.room_id === room.id).at(-1).seq);
    const b2 = makeClient(b.user, { syncState: state });
    await b2.client.whenLive({ timeoutMs: 15000 });
    await a.client.sendMessage(room.id, "fresh");
    await waitFor(() => texts(b2.rec, room.id).length === 1, "b2 gets the new one");
    await sleep(200);
    assert.deepEqual(texts(b2.rec, room.id), ["fresh"]);
  });

  test("requests: errors, timeouts while offline, typing throttle, presence, search", async () => {
    const { a, b, room } = await pair();
    await assert.rejects(a.client.history("123456789"), (e) => e instanceof ConfabError && e.code === "not_found");
    await assert.rejects(a.client.request("no_such_event"), (e) => e.code === "unknown_event");
    await assert.rejects(a.client.sendMessage(room.id, "   "), (e) => e.code === "invalid_payload");

    assert.equal(await a.client.typing(room.id, "start"), true);
    assert.equal(await a.client.typing(room.id, "start"), false, "throttled within 2 s");
    const typing = await waitFor(() => b.rec.typing.find((t) => t.room_id === room.id && t.state === "start"), "typing");
    assert.equal(typing.user_id, a.user);
    assert.equal(await a.client.typing(room.id, "stop"), true);
    await waitFor(() => b.rec.typing.find((t) => t.state === "stop"), "typing stop");

    const settings = await b.client.setSettings({ privateReceipts: true });
    assert.equal(settings.private_receipts, true);
    const rooms = await b.client.listRooms();
    assert.ok(rooms.some((r) => r.id === room.id));
    const pub = await b.client.listPublicRooms();
    assert.ok(pub.some((r) => r.id === room.id));
    const dm = await a.client.openDm(b.user);
    assert.equal(dm.kind, "dm");
    assert.equal((await a.client.openDm(b.user)).id, dm.id);

    await a.client.sendMessage(room.id, "the quarterly deploy happens friday");
    let found = null;
    for (let i = 0; i < 50 && !found; i++) {
      const r = await b.client.search("deploy frid", { roomId: room.id });
      if (r.hits.length) found = r;
      else await sleep(100);
    }
    assert.ok(found, "search finds the message");
    assert.equal(found.hits[0].message.content, "the quarterly deploy happens friday");

    // Requests made while offline wait for the connection, up to their timeout.
    a.net.down();
    await waitFor(() => a.client.state === "offline", "offline");
    const t0 = Date.now();
    await assert.rejects(a.client.request("list_rooms", undefined, { timeoutMs: 300 }), (e) => e.code === "timeout");
    assert.ok(Date.now() - t0 >= 250);
    assert.equal(await a.client.typing(room.id, "start"), false, "typing is not queued offline");
    const waiting = a.client.listMembers(room.id);
    await sleep(200);
    a.net.up();
    a.client.reconnect();
    const members = await waiting;
    assert.ok(members.some((m) => m.user_id === b.user));
    // presence: bob goes away (grace 1 s) and alice hears it.
    b.client.close();
    await waitFor(() => a.rec.presence.find((p) => p.user_id === b.user && p.status === "offline"), "presence", 10000);
  });

  test("REST: register, login, upload with progress, signed URL, file cookie", async () => {
    const username = name("gus");
    const reg = await ConfabClient.register({ url: server.base, username, password: "correct horse", displayName: "Gus" });
    assert.equal(reg.user.id, username);
    const login = await ConfabClient.login({ url: server.base, username, password: "correct horse" });
    assert.equal(typeof login.token, "string");
    await assert.rejects(ConfabClient.login({ url: server.base, username, password: "wrong password" }),
      (e) => e instanceof ConfabError && e.code === "unauthorized" && e.status === 401);
    await assert.rejects(ConfabClient.register({ url: server.base, username, password: "correct horse" }),
      (e) => e.code === "conflict");

    const g = makeClient(username, { getToken: undefined, token: login.token });
    await g.client.whenLive({ timeoutMs: 15000 });
    const progress = [];
    const blob = new Blob(["hello, file\n".repeat(100)], { type: "text/plain" });
    const up = await g.client.uploadFile(blob, { name: "notes.txt", onProgress: (p) => progress.push(p) });
    assert.equal(up.name, "notes.txt");
    assert.equal(up.size, blob.size);
    assert.ok(progress.length >= 1 && progress.at(-1).loaded === blob.size);
    const room = await g.client.createRoom({ name: name("files") });
    const msg = await g.client.sendMessage(room.id, "see attached", { type: "file", fileId: up.id });
    assert.equal(msg.file.id, up.id);
    const signed = await g.client.signedUrl(up.id);
    assert.ok(signed.url.startsWith(server.base + "/files/"));
    const res = await fetch(signed.url);
    assert.equal(res.status, 200);
    assert.equal((await res.text()).length, blob.size);
    await g.client.fileCookie();
    const info = await g.client.getFile(up.id);
    assert.equal(info.id, up.id);
    assert.equal(g.client.resolveUrl(msg.file.url), server.base + msg.file.url);
    const me = await g.client.me();
    assert.equal(me.user.id, username);
  });

  test("close(): pending requests and sends reject with `closed`; ids compare as 64-bit", async () => {
    const h = makeClient(name("hal"));
    await h.client.whenLive({ timeoutMs: 15000 });
    h.net.down();
    await waitFor(() => h.client.state === "offline", "offline");
    const req = h.client.listRooms();
    const send = h.client.sendMessage("1", "never");
    h.client.close();
    await assert.rejects(req, (e) => e.code === "closed");
    await assert.rejects(send, (e) => e.code === "closed");
    assert.equal(h.client.state, "closed");
    assert.equal(h.rec.connection.at(-1).state, "closed");

    assert.ok(compareIds("9007199254740993", "9007199254740992") > 0); // past 2^53
    assert.ok(compareIds("10", "9") > 0);
    assert.equal(compareIds("7263112342016", "7263112342016"), 0);
    const t = Date.UTC(2026, 0, 1);
    assert.equal(timeOfId(idAtTime(t)), t);
  });
}

test("client_msg_ids are UUIDv7: the milliseconds first, so later ids sort later", () => {
  const a = uuidv7(1764288000000);
  const b = uuidv7(1764288000001);
  for (const id of [a, b]) {
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  }
  // 2025-11-28T00:00:00Z = 0x19ac7c27000 ms in the first 48 bits.
  assert.equal(a.slice(0, 13), "019ac7c2-7000");
  assert.ok(a < b, `${a} < ${b}`);
  assert.notEqual(uuidv7(1764288000000), uuidv7(1764288000000), "random bits differ");
});
