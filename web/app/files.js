// Files: uploads with progress (button, drag and drop, paste), image thumbnails with a
// lightbox, and download cards for other files.

import { h, icon, iconButton, formatSize, errorText } from "./dom.js";

const IMAGE_TYPES = new Set(["image/jpeg", "image/png", "image/gif", "image/webp"]);
const THUMB_MAX = 320;

let cookieRefresh = null;
let cookieSet = false;
let firstCookie = null;

/** Sets the download cookie (at sign-in, hourly, and when an image fails to load). */
export function refreshFileCookie(client) {
  if (!cookieRefresh) {
    cookieRefresh = client.fileCookie().catch(() => {}).finally(() => {
      cookieSet = true;
      setTimeout(() => { cookieRefresh = null; }, 5000);
    });
    if (!firstCookie) firstCookie = cookieRefresh;
  }
  return cookieRefresh;
}

/** Forgets the cookie state (sign-out: the next user needs their own cookie). */
export function resetFileCookie() {
  cookieRefresh = null;
  cookieSet = false;
  firstCookie = null;
}

function fitBox(w, h, max = THUMB_MAX) {
  if (!w || !h) return [max, Math.round(max * 0.66)];
  const k = Math.min(1, max / Math.max(w, h));
  return [Math.max(1, Math.round(w * k)), Math.max(1, Math.round(h * k))];
}

function extOf(name) {
  const m = /\.([a-z0-9]{1,5})$/i.exec(name || "");
  return m ? m[1].toUpperCase() : "FILE";
}

/** An image that re-asks for the download cookie once if it fails (expired cookie). */
function guardedImage(client, src, props) {
  const img = h("img", props);
  // Images load only once the download cookie is set (no 401 on the first paint).
  if (cookieSet || !firstCookie) img.src = src;
  else firstCookie.then(() => { img.src = src; });
  let retried = false;
  img.addEventListener("error", async () => {
    if (retried) {
      img.classList.add("broken");
      img.alt = `${props.alt || "Image"} (could not be loaded)`;
      return;
    }
    retried = true;
    await refreshFileCookie(client);
    img.src = `${src}${src.includes("?") ? "&" : "?"}retry=1`;
  });
  return img;
}

/** The attachment of a file/image message, or null. */
export function renderAttachment(client, m) {
  const f = m.file;
  if (!f || m.deleted_at) return null;
  const url = client.resolveUrl(f.url || `/files/${f.id}`);
  if (m.type === "image" && (f.thumbnail_url || IMAGE_TYPES.has(f.mime))) {
    const [w, hgt] = f.thumbnail ? fitBox(f.thumbnail.width, f.thumbnail.height) : fitBox(f.width, f.height);
    const src = client.resolveUrl(f.thumbnail_url || f.url);
    const img = guardedImage(client, src, {
      class: "msg-image", testid: "message-image", alt: f.name || "Image", width: String(w), height: String(hgt),
      loading: "lazy", decoding: "async",
    });
    const btn = h("button", {
      type: "button", class: "image-btn", "aria-label": `Open image ${f.name || ""}`.trim(),
      on: { click: () => openLightbox(client, f) },
    }, img);
    btn.style.setProperty("--img-w", `${w}px`);
    return btn;
  }
  return h("div", { class: "file-card", testid: "file-card" },
    h("span", { class: "file-icon", "aria-hidden": "true" }, icon("file", 22), h("span", { class: "file-ext" }, extOf(f.name))),
    h("span", { class: "file-info" },
      h("a", { class: "file-name", href: url, download: f.name || "", title: f.name || "" }, f.name || "file"),
      h("span", { class: "file-size" }, [formatSize(f.size), f.mime && f.mime !== "application/octet-stream" ? f.mime : null].filter(Boolean).join(" · "))),
    h("a", { class: "icon-btn", href: url, download: f.name || "", "aria-label": `Download ${f.name || "file"}`, title: "Download" }, icon("download", 18)));
}

/** Full-size image in an overlay; Escape, the close button or a click outside closes it. */
export function openLightbox(client, f) {
  const opener = document.activeElement;
  const url = client.resolveUrl(f.url || `/files/${f.id}`);
  const img = guardedImage(client, url, { class: "lightbox-img", alt: f.name || "Image" });
  if (f.width && f.height) {
    img.width = f.width;
    img.height = f.height;
  }
  const close = iconButton("x", "Close image", { class: "lightbox-close", on: { click: () => done() } });
  const dlg = h("dialog", { class: "lightbox", testid: "lightbox", "aria-label": f.name || "Image" },
    h("div", { class: "lightbox-bar" },
      h("span", { class: "lightbox-name" }, f.name || "Image"),
      h("span", { class: "lightbox-size" }, formatSize(f.size)),
      h("a", { class: "icon-btn", href: url, download: f.name || "", "aria-label": "Download", title: "Download" }, icon("download", 18)),
      close),
    h("div", { class: "lightbox-stage" }, img));
  let finished = false;
  function done() {
    if (finished) return;
    finished = true;
    if (dlg.open) dlg.close();
    dlg.remove();
    if (opener?.isConnected) opener.focus();
  }
  dlg.addEventListener("cancel", (ev) => {
    ev.preventDefault();
    done();
  });
  dlg.addEventListener("close", done);
  dlg.addEventListener("click", (ev) => {
    if (ev.target === dlg || ev.target.classList.contains("lightbox-stage")) done();
  });
  document.body.append(dlg);
  dlg.showModal();
  close.focus();
  return done;
}

/**
 * The upload tray above the composer. add(files) uploads each with progress, then sends a
 * message of type image (JPEG/PNG/GIF/WebP) or file carrying it.
 */
export function createUploader({ client, getRoomId, onSent }) {
  const tray = h("div", { class: "upload-tray", "aria-live": "polite" });

  function add(fileList) {
    const files = [...fileList].filter((f) => f && f.size >= 0);
    for (const file of files) upload(file, getRoomId());
  }

  function upload(file, roomId) {
    const ctrl = new AbortController();
    const bar = h("progress", { class: "upload-bar", max: "100", value: "0", "aria-label": `Uploading ${file.name}` });
    const pct = h("span", { class: "upload-pct" }, "0%");
    const name = h("span", { class: "upload-name", title: file.name }, file.name || "file");
    const cancel = iconButton("x", `Cancel upload of ${file.name}`, { class: "sm", on: { click: () => ctrl.abort() } });
    const item = h("div", { class: "upload", testid: "upload-progress", role: "group", "aria-label": `Upload ${file.name}` },
      h("span", { class: "upload-icon", "aria-hidden": "true" }, icon(file.type.startsWith("image/") ? "upload" : "file", 16)),
      h("span", { class: "upload-main" },
        h("span", { class: "upload-row" }, name, h("span", { class: "upload-size" }, formatSize(file.size))),
        bar),
      pct, cancel);
    tray.append(item);
    if (file.size === 0) {
      fail(item, pct, cancel, "This file is empty.");
      return;
    }
    client.uploadFile(file, {
      signal: ctrl.signal,
      onProgress: ({ loaded, total }) => {
        const p = total ? Math.min(100, Math.round((loaded / total) * 100)) : 0;
        bar.value = p;
        pct.textContent = `${p}%`;
      },
    }).then(async (up) => {
      bar.value = 100;
      pct.textContent = "Sending…";
      cancel.disabled = true;
      const type = IMAGE_TYPES.has(up.mime) ? "image" : "file";
      const sent = client.sendMessage(roomId, "", { type, fileId: up.id });
      onSent?.(roomId);
      await sent;
      item.classList.add("done");
      setTimeout(() => item.remove(), 300);
    }).catch((err) => {
      if (err.code === "aborted") {
        item.remove();
        return;
      }
      fail(item, pct, cancel, err.code === "too_large" ? "Too large to upload." : errorText(err));
    });
  }

  function fail(item, pct, cancel, msg) {
    item.classList.add("failed");
    pct.textContent = msg;
    pct.classList.add("error");
    item.querySelector("progress")?.remove();
    cancel.disabled = false;
    cancel.setAttribute("aria-label", "Dismiss");
    cancel.title = "Dismiss";
    cancel.replaceChildren(icon("x"));
    cancel.onclick = () => item.remove();
  }

  return { tray, add };
}

/** Drag and drop of files onto `zone` (with a visible drop target). */
export function enableDrop(zone, onFiles) {
  let depth = 0;
  const hint = h("div", { class: "drop-hint", "aria-hidden": "true" },
    h("div", { class: "drop-card" }, icon("upload", 28), h("span", null, "Drop files to share them")));
  zone.append(hint);
  const hasFiles = (ev) => [...(ev.dataTransfer?.types || [])].includes("Files");
  zone.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth++;
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    if (ev.dataTransfer.files?.length) onFiles(ev.dataTransfer.files);
  });
}

/** Files (images) pasted into `el`. */
export function pastedFiles(ev) {
  const out = [];
  for (const item of ev.clipboardData?.items || []) {
    if (item.kind !== "file") continue;
    const f = item.getAsFile();
    if (!f) continue;
    if (f.type.startsWith("image/") && (!f.name || f.name === "image.png")) {
      const ext = (f.type.split("/")[1] || "png").replace("jpeg", "jpg");
      const stamp = new Date().toISOString().slice(0, 19).replace(/[T:]/g, "-");
      out.push(new File([f], `pasted-${stamp}.${ext}`, { type: f.type }));
    } else {
      out.push(f);
    }
  }
  return out;
}
