// The message composer: auto-growing textarea (Enter sends, Shift+Enter new line), send
// button, attach button (input type=file multiple), paste of images, upload tray, per-room drafts.

import { h, icon } from "./dom.js";
import { createUploader, pastedFiles } from "./files.js";

export function createComposer({ client, getRoomId, onSent }) {
  const drafts = new Map();
  let roomId = null;

  const textarea = h("textarea", {
    class: "composer-input", testid: "composer", rows: "1", "aria-label": "Message",
    placeholder: "Message", enterkeyhint: "send", autocomplete: "off",
  });
  const file = h("input", {
    type: "file", multiple: true, class: "visually-hidden", testid: "attach", tabindex: "-1",
    "aria-label": "Attach files",
  });
  const attachBtn = h("button", {
    type: "button", class: "icon-btn", "aria-label": "Attach files", title: "Attach files",
    on: { click: () => file.click() },
  }, icon("clip", 20));
  const send = h("button", { type: "submit", class: "send-btn", testid: "send", "aria-label": "Send message", title: "Send (Enter)", disabled: true }, icon("send", 18));
  const error = h("p", { class: "composer-error", role: "alert", hidden: true });
  const uploader = createUploader({ client, getRoomId: () => roomId, onSent });
  const form = h("form", { class: "composer", "aria-label": "Send a message" },
    uploader.tray,
    h("div", { class: "composer-box" }, attachBtn, file, textarea, send),
    error,
    h("p", { class: "composer-hint", "aria-hidden": "true" },
      h("kbd", null, "Enter"), " to send · ", h("kbd", null, "Shift + Enter"), " for a new line"));

  function showError(msg) {
    error.textContent = msg || "";
    error.hidden = !msg;
  }

  function autosize() {
    textarea.style.height = "auto";
    textarea.style.height = `${Math.min(textarea.scrollHeight, Math.max(120, Math.round(window.innerHeight * 0.35)))}px`;
    send.disabled = !textarea.value.trim();
  }

  function submit() {
    const text = textarea.value;
    if (!text.trim() || !roomId) return;
    const target = roomId;
    textarea.value = "";
    drafts.delete(target);
    autosize();
    showError("");
    client.sendMessage(target, text).catch((err) => {
      if (err.code === "too_large") {
        // Refused before it was queued: give the text back.
        if (roomId === target && !textarea.value) {
          textarea.value = text;
          autosize();
        }
        showError("This message is too long. Split it into smaller ones.");
      }
    });
    onSent?.(target);
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit();
    textarea.focus();
  });
  textarea.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.altKey && !ev.ctrlKey && !ev.metaKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      submit();
    }
  });
  textarea.addEventListener("input", () => {
    autosize();
    if (!roomId) return;
    drafts.set(roomId, textarea.value);
    if (error.textContent) showError("");
    if (textarea.value.trim()) client.typing(roomId, "start").catch(() => {});
    else client.typing(roomId, "stop").catch(() => {});
  });
  textarea.addEventListener("blur", () => {
    if (roomId) client.typing(roomId, "stop").catch(() => {});
  });
  textarea.addEventListener("paste", (ev) => {
    const files = pastedFiles(ev);
    if (files.length) {
      ev.preventDefault();
      uploader.add(files);
    }
  });
  file.addEventListener("change", () => {
    if (file.files?.length) uploader.add(file.files);
    file.value = "";
  });

  function setRoom(id, label) {
    if (roomId && roomId !== id) {
      if (textarea.value) drafts.set(roomId, textarea.value);
      client.typing(roomId, "stop").catch(() => {});
    }
    roomId = id;
    textarea.value = drafts.get(id) || "";
    textarea.placeholder = label ? `Message ${label}` : "Message";
    textarea.setAttribute("aria-label", label ? `Message ${label}` : "Message");
    showError("");
    autosize();
  }

  return { el: form, setRoom, focus: () => textarea.focus(), addFiles: (f) => uploader.add(f), textarea };
}
