// Modal dialogs on the native <dialog> element: focus is trapped by the browser, Escape
// closes, the backdrop click closes, focus returns to the opener, the element leaves the DOM.

import { h, iconButton } from "./dom.js";

let seq = 0;

/**
 * openDialog({title, body, actions, testid, className, onClose}) → {dialog, close, setError}
 * `body` and `actions` are nodes (or arrays of nodes).
 */
export function openDialog({ title, description, body, actions, testid, className, onClose, labelHidden }) {
  const id = `dlg-${++seq}`;
  const opener = document.activeElement;
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const dialog = h("dialog", {
    class: ["dialog", className],
    "aria-labelledby": `${id}-title`,
    testid,
  },
  h("div", { class: "dialog-head" },
    h("h2", { id: `${id}-title`, class: ["dialog-title", labelHidden && "visually-hidden"] }, title),
    iconButton("x", "Close", { class: "dialog-close", on: { click: () => close() } })),
  description ? h("p", { class: "dialog-desc" }, description) : null,
  h("div", { class: "dialog-body" }, body),
  error,
  actions ? h("div", { class: "dialog-actions" }, actions) : null);

  let closed = false;
  function close(result) {
    if (closed) return;
    closed = true;
    if (dialog.open) dialog.close();
    dialog.remove();
    onClose?.(result);
    if (opener && typeof opener.focus === "function" && opener.isConnected) opener.focus();
  }
  dialog.addEventListener("close", () => close());
  dialog.addEventListener("cancel", (ev) => {
    ev.preventDefault();
    close();
  });
  dialog.addEventListener("mousedown", (ev) => {
    if (ev.target === dialog) {
      // A click on the backdrop (outside the dialog's box) closes it.
      const r = dialog.getBoundingClientRect();
      const inside = ev.clientX >= r.left && ev.clientX <= r.right && ev.clientY >= r.top && ev.clientY <= r.bottom;
      if (!inside) close();
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  const first = dialog.querySelector("input:not([type=hidden]), select, textarea, .dialog-body button, .dialog-actions button.primary");
  if (first) first.focus();
  function setError(msg) {
    error.textContent = msg || "";
    error.hidden = !msg;
  }
  return { dialog, close, setError };
}

/** A yes/no confirmation; resolves true when confirmed. */
export function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false, testid }) {
  return new Promise((resolve) => {
    let result = false;
    const ok = h("button", {
      type: "button", class: ["btn", danger ? "danger" : "primary"], testid,
      on: { click: () => { result = true; d.close(); } },
    }, confirmLabel);
    const cancel = h("button", { type: "button", class: "btn", on: { click: () => d.close() } }, "Cancel");
    const d = openDialog({
      title, body: h("p", { class: "confirm-text" }, message), actions: [cancel, ok], className: "dialog-sm",
      onClose: () => resolve(result),
    });
    ok.focus();
  });
}

/** A labelled form field: <label>Text <input></label> with an optional hint. */
export function field(label, control, hint) {
  return h("label", { class: "field" },
    h("span", { class: "field-label" }, label),
    control,
    hint ? h("span", { class: "field-hint" }, hint) : null);
}
