// The signed-in session (token + user) in localStorage, and the few REST routes the SDK has no
// method for (first-run setup, administration). Those go through the SDK's own requestJson so
// errors are the same ConfabError objects as everywhere else.

import { requestJson } from "/sdk/http.js";

const KEY = "confab.session";

export function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) || "null");
    if (s && typeof s.token === "string" && s.user && typeof s.user.id === "string") return s;
  } catch {
    // ignore a corrupt entry
  }
  return null;
}

export function saveSession(s) {
  try {
    localStorage.setItem(KEY, JSON.stringify({ token: s.token, user: s.user }));
  } catch {
    // storage full or disabled: the session lasts as long as the page
  }
}

export function clearSession() {
  try {
    localStorage.removeItem(KEY);
    // The SDK's persisted outbox for this browser: a signed-out browser keeps nothing.
    for (let i = localStorage.length - 1; i >= 0; i--) {
      const k = localStorage.key(i);
      if (k && k.startsWith("confab:v1:")) localStorage.removeItem(k);
    }
  } catch {
    // ignore
  }
}

export { tokenExpiry } from "/sdk/token.js";

const base = () => location.origin;

export function setup({ setupToken, username, password, displayName, roomName }) {
  const body = { setup_token: setupToken, username, password };
  if (displayName) body.display_name = displayName;
  if (roomName) body.room_name = roomName;
  return requestJson(base(), "POST", "/api/setup", { body });
}

export function adminSettings(token) {
  return requestJson(base(), "GET", "/api/admin/settings", { token });
}

export function setRegistration(token, registration) {
  return requestJson(base(), "PATCH", "/api/admin/settings", { token, body: { registration } });
}

export function createInvite(token, { maxUses, ttlSecs } = {}) {
  const body = {};
  if (maxUses != null) body.max_uses = maxUses;
  if (ttlSecs != null) body.ttl_secs = ttlSecs;
  return requestJson(base(), "POST", "/api/admin/invites", { token, body });
}
