// Browser notifications for messages the user can't see, and the unread total in the title.

import { h, icon, attentive } from "./dom.js";

const DISMISSED = "confab.notifications.dismissed";

export function setupNotifications(store, { openRoom, appName }) {
  const supported = typeof Notification === "function";

  function updateTitle() {
    const n = store.totalUnread();
    document.title = n > 0 ? `(${n > 999 ? "999+" : n}) ${appName}` : appName;
  }
  store.on("unread", updateTitle);
  store.on("rooms", updateTitle);
  updateTitle();

  store.on("incoming", ({ roomId, message, own, live }) => {
    if (own || !live || !supported || Notification.permission !== "granted") return;
    if (message.type === "system" || message.deleted_at) return;
    if (attentive() && store.openRoomId === roomId) return;
    const r = store.rooms.get(roomId);
    const sender = store.nameOf(message.sender_id);
    const where = r && r.room.kind !== "dm" ? ` in #${r.room.name}` : "";
    let body = message.content;
    if (message.type === "image") body = message.content || "sent an image";
    else if (message.type === "file") body = message.content || `sent a file: ${message.file?.name || "file"}`;
    try {
      const n = new Notification(`${sender}${where}`, { body: body.slice(0, 200), tag: `confab-${roomId}`, renotify: true });
      n.onclick = () => {
        window.focus();
        openRoom(roomId);
        n.close();
      };
    } catch {
      // Some platforms only allow notifications from a service worker: nothing to do.
    }
  });

  /** The sidebar prompt: shown until permission is decided or the prompt is dismissed. */
  function prompt() {
    if (!supported || Notification.permission !== "default") return null;
    try {
      if (localStorage.getItem(DISMISSED)) return null;
    } catch {
      // ignore
    }
    const box = h("div", { class: "notify-prompt", role: "region", "aria-label": "Notifications" });
    const enable = h("button", {
      type: "button", class: "btn primary sm", testid: "enable-notifications", "aria-label": "Enable notifications",
      on: {
        click: async () => {
          try {
            await Notification.requestPermission();
          } catch {
            // ignore
          }
          box.remove();
        },
      },
    }, "Enable");
    const later = h("button", {
      type: "button", class: "btn ghost sm", "aria-label": "Not now, don't ask again",
      on: {
        click: () => {
          try {
            localStorage.setItem(DISMISSED, "1");
          } catch {
            // ignore
          }
          box.remove();
        },
      },
    }, "Not now");
    box.append(
      h("div", { class: "notify-text" }, icon("bell", 16), h("span", null, "Get desktop notifications for new messages.")),
      h("div", { class: "notify-actions" }, enable, later));
    return box;
  }

  return { prompt, updateTitle };
}
