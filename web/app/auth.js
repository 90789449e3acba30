// Signed-out screens: first-run setup, login, registration (open or by invite).

import { ConfabClient } from "/sdk/confab.js";
import { h, icon, errorText } from "./dom.js";
import { setup } from "./session.js";

function brand(server) {
  return h("div", { class: "auth-brand" },
    h("span", { class: "brand-mark", "aria-hidden": "true" }, icon("chat", 22)),
    h("span", { class: "brand-name" }, server?.name || "Confab"));
}

function input(testid, props) {
  return h("input", { class: "input", testid, ...props });
}

function fieldRow(label, control, hint) {
  const id = control.id || `f-${control.dataset.testid}`;
  control.id = id;
  return h("div", { class: "field" },
    h("label", { class: "field-label", for: id }, label),
    control,
    hint ? h("span", { class: "field-hint" }, hint) : null);
}

const USERNAME_RE = /^[a-z0-9_.-]{3,32}$/;

const PASSWORD_HINT = "At least 8 characters; not your username or a common password";

// The server also refuses the most common passwords (and says so); these are the quick checks.
function checkCredentials(username, password, displayName) {
  if (!USERNAME_RE.test(username)) return "Usernames are 3–32 characters: lowercase letters, digits, _ . and -.";
  if (new TextEncoder().encode(password).length < 8) return "Passwords need at least 8 characters.";
  const pw = password.toLowerCase();
  if (pw === username || (displayName && pw === displayName.trim().toLowerCase())) {
    return "Your password must not be your username or display name.";
  }
  return null;
}

/**
 * Renders the signed-out UI into `root`.
 * opts: {server, setupToken, invite, notice, onSignedIn({token, user}, {roomId?})}
 */
export function renderAuth(root, opts) {
  let { server } = opts;
  const errorEl = h("p", { class: "auth-error", testid: "auth-error", role: "alert", hidden: true });
  const noticeEl = h("p", { class: "auth-notice", role: "status", hidden: !opts.notice }, opts.notice || "");
  const body = h("div", { class: "auth-body" });
  const card = h("main", { class: "auth-card" }, brand(server), noticeEl, body, errorEl);
  root.replaceChildren(h("div", { class: "auth-screen" }, card,
    h("p", { class: "auth-foot" }, `${server?.name || "Confab"} ${server?.version ? `v${server.version}` : ""}`.trim())));

  function showError(msg) {
    errorEl.textContent = msg || "";
    errorEl.hidden = !msg;
  }

  async function busy(btn, fn) {
    showError("");
    btn.disabled = true;
    btn.classList.add("loading");
    try {
      await fn();
    } catch (err) {
      showError(describe(err));
    } finally {
      btn.disabled = false;
      btn.classList.remove("loading");
    }
  }

  function describe(err, what) {
    if (err?.code === "unauthorized") return "Wrong username or password.";
    if (err?.code === "rate_limited") {
      const secs = Math.max(1, Math.ceil((err.retryAfterMs ?? 1000) / 1000));
      return `Too many attempts. Try again in ${secs} second${secs === 1 ? "" : "s"}.`;
    }
    if (err?.code === "conflict") return what === "setup" ? "This server is already set up. Sign in instead." : "That username is taken. Pick another one.";
    if (err?.code === "forbidden") {
      if (what === "setup") return "This setup link is not valid any more. Use the link printed by the server at its last start.";
      return server?.registration === "invite" ? "A valid invite code is needed to register." : "Registration is closed on this server.";
    }
    return errorText(err);
  }

  function showSetupMissing() {
    body.replaceChildren(
      h("h1", { class: "auth-title" }, "Set up this server"),
      h("p", { class: "auth-sub" }, "This server has no administrator yet. Open the setup link printed by the server when it started — it looks like "),
      h("code", { class: "auth-code" }, `${location.origin}/?setup=…`),
      h("p", { class: "auth-sub" }, "The link works once; restarting the server prints a new one."));
  }

  function showSetup() {
    const username = input("setup-username", { name: "username", autocomplete: "username", autocapitalize: "none", spellcheck: "false", required: true });
    const password = input("setup-password", { name: "password", type: "password", autocomplete: "new-password", required: true });
    const display = input("setup-display-name", { name: "display_name", autocomplete: "name" });
    const room = input("setup-room", { name: "room", value: "general", placeholder: "general" });
    const submit = h("button", { type: "submit", class: "btn primary block", testid: "setup-submit" }, "Create admin account");
    const form = h("form", { class: "auth-form", testid: "setup-form", novalidate: true },
      fieldRow("Admin username", username, "3–32 characters: a–z, 0–9, _ . -"),
      fieldRow("Display name", display),
      fieldRow("Password", password, PASSWORD_HINT),
      fieldRow("First room", room),
      submit);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const u = username.value.trim().toLowerCase();
      const problem = checkCredentials(u, password.value, display.value);
      if (problem) return showError(problem);
      busy(submit, async () => {
        try {
          const ans = await setup({
            setupToken: opts.setupToken, username: u, password: password.value,
            displayName: display.value.trim() || undefined, roomName: room.value.trim() || undefined,
          });
          opts.onSignedIn({ token: ans.token, user: ans.user }, { roomId: ans.room?.id });
        } catch (err) {
          throw Object.assign(new Error(describe(err, "setup")), { code: "x" });
        }
      });
    });
    body.replaceChildren(
      h("h1", { class: "auth-title" }, "Welcome to Confab"),
      h("p", { class: "auth-sub" }, "Create the administrator account and the first room."),
      form);
    username.focus();
  }

  function showLogin() {
    const username = input("login-username", { name: "username", autocomplete: "username", autocapitalize: "none", spellcheck: "false", required: true });
    const password = input("login-password", { name: "password", type: "password", autocomplete: "current-password", required: true });
    const submit = h("button", { type: "submit", class: "btn primary block", testid: "login-submit" }, "Sign in");
    const form = h("form", { class: "auth-form", testid: "login-form", novalidate: true },
      fieldRow("Username", username),
      fieldRow("Password", password),
      submit);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const u = username.value.trim().toLowerCase();
      if (!u || !password.value) return showError("Enter your username and password.");
      busy(submit, async () => {
        const ans = await ConfabClient.login({ username: u, password: password.value });
        opts.onSignedIn(ans, {});
      });
    });
    const canRegister = server?.registration === "open" || server?.registration === "invite";
    body.replaceChildren(
      h("h1", { class: "auth-title" }, "Sign in"),
      h("p", { class: "auth-sub" }, `Welcome back to ${server?.name || "Confab"}.`),
      form,
      canRegister ? h("p", { class: "auth-switch" }, "New here? ",
        h("button", {
          type: "button", class: "link-btn", testid: "show-register", on: {
            click: () => {
              showError("");
              showRegister();
              // The mode may have changed since the page loaded (an admin switched it).
              ConfabClient.serverInfo().then((fresh) => {
                server = fresh;
                if (fresh.registration === "invite") addInviteField?.();
              }, () => {});
            },
          },
        },
          "Create an account")) : null);
    username.focus();
  }

  let addInviteField = null;

  function showRegister() {
    const invite = server?.registration === "invite";
    const username = input("register-username", { name: "username", autocomplete: "username", autocapitalize: "none", spellcheck: "false", required: true });
    const display = input("register-display-name", { name: "display_name", autocomplete: "name" });
    const password = input("register-password", { name: "password", type: "password", autocomplete: "new-password", required: true });
    const code = input("register-invite", { name: "invite", autocomplete: "off", autocapitalize: "none", spellcheck: "false", value: opts.invite || "" });
    const submit = h("button", { type: "submit", class: "btn primary block", testid: "register-submit" }, "Create account");
    const form = h("form", { class: "auth-form", testid: "register-form", novalidate: true },
      fieldRow("Username", username, "3–32 characters: a–z, 0–9, _ . -"),
      fieldRow("Display name", display, "How others see you"),
      fieldRow("Password", password, PASSWORD_HINT),
      invite || opts.invite ? fieldRow("Invite code", code) : null,
      submit);
    const sub = h("p", { class: "auth-sub" }, invite ? "This server is invite-only: you need an invite code." : `Join ${server?.name || "Confab"}.`);
    addInviteField = () => {
      if (!code.isConnected) submit.before(fieldRow("Invite code", code));
      sub.textContent = "This server is invite-only: you need an invite code.";
    };
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const u = username.value.trim().toLowerCase();
      const problem = checkCredentials(u, password.value, display.value);
      if (problem) return showError(problem);
      const needCode = server?.registration === "invite";
      if (needCode && !code.value.trim()) return showError("Enter your invite code.");
      busy(submit, async () => {
        try {
          const ans = await ConfabClient.register({
            username: u, password: password.value,
            displayName: display.value.trim() || undefined,
            invite: code.isConnected && code.value.trim() ? code.value.trim() : undefined,
          });
          opts.onSignedIn(ans, {});
        } catch (err) {
          throw Object.assign(new Error(describe(err, "register")), { code: "x" });
        }
      });
    });
    body.replaceChildren(
      h("h1", { class: "auth-title" }, "Create your account"),
      sub,
      form,
      h("p", { class: "auth-switch" }, "Already have an account? ",
        h("button", { type: "button", class: "link-btn", on: { click: () => { showError(""); showLogin(); } } }, "Sign in")));
    username.focus();
  }

  if (server?.setup_needed) {
    if (opts.setupToken) showSetup();
    else showSetupMissing();
  } else if (opts.invite && server?.registration !== "closed") {
    showRegister();
  } else {
    showLogin();
  }
}
