// Confab web UI entry point: decides between setup, sign-in and the chat app, and wires the
// ConfabClient (web/sdk) to the views.

import { ConfabClient } from "/sdk/confab.js";
import { h, icon, errorText } from "./dom.js";
import { renderAuth } from "./auth.js";
import { loadSession, saveSession, clearSession, tokenExpiry } from "./session.js";
import { Store } from "./store.js";
import { createSidebar } from "./sidebar.js";
import { createConversation } from "./conversation.js";
import { createSearch } from "./search.js";
import { setupNotifications } from "./notify.js";
import { refreshFileCookie, resetFileCookie } from "./files.js";

const root = document.getElementById("app");
const LAST_ROOM = "confab.lastRoom";
const wide = window.matchMedia("(min-width: 768px)");

let server = null;
let teardown = null;

function params() {
  return new URLSearchParams(location.search);
}

function dropParams(...names) {
  const u = new URL(location.href);
  let changed = false;
  for (const n of names) {
    if (u.searchParams.has(n)) {
      u.searchParams.delete(n);
      changed = true;
    }
  }
  if (changed) history.replaceState(null, "", u.pathname + (u.search || "") + u.hash);
}

function showFatal(message, retry) {
  root.replaceChildren(h("div", { class: "auth-screen" },
    h("main", { class: "auth-card center" },
      h("div", { class: "auth-brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" }, icon("chat", 22)), h("span", { class: "brand-name" }, "Confab")),
      h("h1", { class: "auth-title" }, "Can't reach the server"),
      h("p", { class: "auth-sub", role: "alert" }, message),
      h("button", { type: "button", class: "btn primary block", on: { click: retry } }, "Try again"))));
}

async function boot() {
  root.replaceChildren(h("div", { class: "boot", role: "status" }, h("span", { class: "spinner" }), "Loading…"));
  try {
    server = await ConfabClient.serverInfo();
  } catch (err) {
    showFatal(errorText(err), boot);
    return;
  }
  const p = params();
  if (server.setup_needed) {
    clearSession();
    showAuth({ setupToken: p.get("setup") });
    return;
  }
  dropParams("setup");
  const session = loadSession();
  const exp = session ? tokenExpiry(session.token) : null;
  if (session && (exp == null || exp > Date.now() + 5000)) {
    dropParams("invite");
    startApp(session, {});
  } else {
    if (session) clearSession();
    showAuth({ invite: p.get("invite"), notice: session ? "Your session expired. Please sign in again." : null });
  }
}

function showAuth({ setupToken, invite, notice } = {}) {
  document.title = server?.name || "Confab";
  renderAuth(root, {
    server, setupToken, invite, notice,
    onSignedIn: (session, extra) => {
      saveSession(session);
      dropParams("setup", "invite");
      startApp(session, extra || {});
    },
  });
}

function signOut(notice) {
  if (teardown) {
    teardown();
    teardown = null;
  }
  clearSession();
  document.title = server?.name || "Confab";
  // Ask the server again: setup or registration may have changed.
  ConfabClient.serverInfo().then((s) => { server = s; }, () => {}).finally(() => showAuth({ notice }));
}

function startApp(session, { roomId: initialRoom }) {
  const appName = server?.name || "Confab";
  const client = new ConfabClient({ token: session.token, persist: { outbox: true } });
  window.confab = client; // debug handle
  const store = new Store(client, { ...session.user });
  const cleanups = [];
  let expired = false;

  const expire = () => {
    if (expired) return;
    expired = true;
    signOut("Your session expired. Please sign in again.");
  };

  // ---- views -----------------------------------------------------------------------------

  const notify = setupNotifications(store, { openRoom: (id) => openRoom(id), appName });
  const search = createSearch({
    store,
    openResult: (roomId, messageId) => {
      if (!store.rooms.has(roomId)) return;
      openRoom(roomId, { messageId });
    },
    onActive: (on) => sidebar.el.classList.toggle("searching", on),
  });
  const sidebar = createSidebar({
    store, openRoom: (id) => openRoom(id), onLogout: () => signOut(null),
    notifyPrompt: notify.prompt, searchBox: search, serverName: appName, getToken: () => session.token,
  });
  const conversation = createConversation({
    store,
    onBack: () => showSidebar(),
    onLeft: () => {
      sidebar.setCurrent(null);
      showSidebar();
    },
  });
  conversation.setOpenRoom((id) => openRoom(id));

  const bannerText = h("span", { class: "banner-text" });
  const retry = h("button", { type: "button", class: "link-btn", hidden: true, on: { click: () => client.reconnect() } }, "Retry now");
  // The status text (the test hook) and the retry button are siblings, so the hook's text is
  // exactly the state ("Reconnecting…").
  const status = h("span", { class: "banner-status", testid: "connection-banner", role: "status", "aria-live": "polite" },
    h("span", { class: "spinner sm", "aria-hidden": "true" }), bannerText);
  const banner = h("div", { class: "connection-banner" }, status, retry);
  bannerText.textContent = "Connecting…";

  const app = h("div", { class: "app" }, banner, sidebar.el, conversation.el);
  root.replaceChildren(app);

  function openRoom(id, opts = {}) {
    if (!store.rooms.has(id)) return;
    sidebar.setCurrent(id);
    app.classList.add("show-main");
    try {
      localStorage.setItem(LAST_ROOM, id);
    } catch {
      // ignore
    }
    conversation.open(id, opts);
    if (wide.matches && !opts.messageId) conversation.focusComposer();
  }

  function showSidebar() {
    app.classList.remove("show-main");
    const cur = conversation.roomId;
    const item = cur && sidebar.el.querySelector(`[data-testid="room-item"][data-room-id="${cur}"]`);
    (item || sidebar.el.querySelector("[data-testid=room-item]"))?.focus();
  }

  // ---- connection ------------------------------------------------------------------------

  let everLive = false;
  let conn = { state: client.state, retryInMs: null };
  function updateBanner() {
    const { state, retryInMs } = conn;
    const netDown = navigator.onLine === false;
    const live = state === "live" && !netDown;
    banner.hidden = live;
    status.hidden = live;
    if (live) return;
    if (netDown) {
      bannerText.textContent = "Reconnecting… You're offline.";
      retry.hidden = true;
    } else if (state === "offline") {
      bannerText.textContent = retryInMs == null ? "Disconnected." : "Reconnecting…";
      retry.hidden = false;
    } else {
      bannerText.textContent = everLive ? "Reconnecting…" : "Connecting…";
      retry.hidden = true;
    }
  }
  cleanups.push(client.on("connection", (ev) => {
    if (ev.state === "closed") return;
    if (ev.state === "offline" && ev.error?.code === "token_expired") {
      expire();
      return;
    }
    conn = ev;
    if (ev.state === "live") {
      if (everLive) store.refreshRooms();
      everLive = true;
    }
    updateBanner();
  }));
  window.addEventListener("online", updateBanner);
  window.addEventListener("offline", updateBanner);
  cleanups.push(() => {
    window.removeEventListener("online", updateBanner);
    window.removeEventListener("offline", updateBanner);
  });
  cleanups.push(client.on("error", (err) => {
    if (err.code === "token_expired" || (err.code === "unauthorized" && err.status === 401)) expire();
  }));

  const exp = tokenExpiry(session.token);
  if (exp) {
    const t = setTimeout(expire, Math.min(2 ** 31 - 1, Math.max(0, exp - Date.now())));
    cleanups.push(() => clearTimeout(t));
  }

  // ---- start -----------------------------------------------------------------------------

  resetFileCookie();
  refreshFileCookie(client);
  const cookieTimer = setInterval(() => refreshFileCookie(client), 60 * 60 * 1000);
  cleanups.push(() => clearInterval(cookieTimer));

  client.me().then((me) => {
    if (me?.user) {
      store.me.name = me.user.name;
      if (me.user.name !== session.user.name) saveSession({ token: session.token, user: me.user });
    }
    if (me?.admin) {
      store.admin = true;
      sidebar.showAdmin();
    }
  }, (err) => {
    if (err.status === 401 || err.code === "unauthorized" || err.code === "token_expired") expire();
  });

  store.loadRooms().then(() => {
    let target = initialRoom && store.rooms.has(initialRoom) ? initialRoom : null;
    if (!target) {
      try {
        const last = localStorage.getItem(LAST_ROOM);
        if (last && store.rooms.has(last)) target = last;
      } catch {
        // ignore
      }
    }
    if (!target && wide.matches) {
      const first = [...store.rooms.values()].find((r) => r.room.kind !== "dm") || [...store.rooms.values()][0];
      target = first?.room.id || null;
    }
    // On a phone the room list is the first screen: nothing opens by itself.
    if (target && wide.matches) openRoom(target);
  }, (err) => {
    if (err.code === "closed") return;
    if (err.status === 401 || err.code === "token_expired") expire();
  });

  const onKey = (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "k") {
      ev.preventDefault();
      search.focus();
    }
  };
  document.addEventListener("keydown", onKey);
  cleanups.push(() => document.removeEventListener("keydown", onKey));

  teardown = () => {
    for (const c of cleanups) c();
    conversation.close();
    client.close();
    if (window.confab === client) delete window.confab;
    for (const d of document.querySelectorAll("dialog")) d.remove();
  };
}

boot();
