// REST helpers: JSON requests with a Bearer token and raw-body uploads with progress.

import { ConfabError } from "./errors.js";

/** The server's base URL without a trailing slash ("https://chat.example.com", "/chat" prefix kept). */
export function normalizeBaseUrl(url) {
  let base = url;
  if (base == null) {
    base = globalThis.location?.origin;
    if (!base) throw new TypeError("ConfabClient: `url` is required outside a browser page");
  }
  const u = new URL(String(base), globalThis.location?.href);
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new TypeError(`ConfabClient: url must be http(s), got ${u.protocol}`);
  }
  return (u.origin + u.pathname).replace(/\/+$/, "");
}

/** The WebSocket URL for a base URL (http → ws, https → wss). */
export function webSocketUrl(base, query) {
  return base.replace(/^http/, "ws") + "/ws" + (query ? `?${query}` : "");
}

function retryAfterHeader(headers) {
  const v = headers?.get?.("retry-after");
  if (!v) return null;
  const secs = Number(v);
  return Number.isFinite(secs) ? Math.max(0, secs * 1000) : null;
}

/** Turns a non-2xx answer into a ConfabError. */
async function errorOf(res, route) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    // Not JSON: fall back on the status.
  }
  const wire = body && typeof body === "object" ? body.error : null;
  const fallback = {
    code: res.status === 401 ? "unauthorized" : res.status === 404 ? "not_found"
      : res.status === 429 ? "rate_limited" : res.status >= 500 ? "unavailable" : "invalid_payload",
    message: `HTTP ${res.status}`,
  };
  return ConfabError.fromWire(wire || fallback, {
    status: res.status,
    event: route,
    retryAfterMs: retryAfterHeader(res.headers),
  });
}

/**
 * One JSON request. Resolves with the parsed answer (null for an empty one); rejects with a
 * ConfabError (`network` when no answer came, `timeout` after timeoutMs).
 */
export async function requestJson(base, method, path, opts = {}) {
  const { token, body, timeoutMs = 10000, credentials } = opts;
  const route = `${method} ${path.split("?")[0]}`;
  if (typeof fetch !== "function") throw new ConfabError("network", "fetch() is not available");
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const ctrl = typeof AbortController === "function" ? new AbortController() : null;
  let timedOut = false;
  const timer = ctrl && timeoutMs > 0 && Number.isFinite(timeoutMs)
    ? setTimeout(() => { timedOut = true; ctrl.abort(); }, timeoutMs)
    : null;
  let res;
  try {
    res = await fetch(base + path, {
      method,
      headers,
      body: payload,
      signal: ctrl?.signal,
      credentials: credentials ?? "same-origin",
    });
  } catch (cause) {
    if (timer) clearTimeout(timer);
    if (timedOut) throw new ConfabError("timeout", `${route}: no answer within ${timeoutMs} ms`, { event: route });
    throw new ConfabError("network", `${route}: ${cause?.message || "request failed"}`, { event: route, cause });
  }
  try {
    if (!res.ok) throw await errorOf(res, route);
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  } catch (err) {
    if (err instanceof ConfabError) throw err;
    if (timedOut) throw new ConfabError("timeout", `${route}: no answer within ${timeoutMs} ms`, { event: route });
    throw new ConfabError("network", `${route}: ${err?.message || "bad answer"}`, { event: route, cause: err });
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/**
 * POST /api/files?name=... with the raw bytes. Uses XMLHttpRequest (upload progress) when the
 * platform has it, fetch() otherwise (progress is then reported once, at the end).
 * Resolves with the answer's `file` (the Upload record).
 */
export function uploadRaw(base, token, blob, opts = {}) {
  const { name, onProgress, signal } = opts;
  const path = "/api/files" + (name ? `?name=${encodeURIComponent(name)}` : "");
  const route = "POST /api/files";
  const total = typeof blob?.size === "number" ? blob.size : null;
  if (signal?.aborted) return Promise.reject(new ConfabError("aborted", "upload aborted", { event: route }));

  if (typeof XMLHttpRequest === "function") {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", base + path);
      xhr.setRequestHeader("authorization", `Bearer ${token}`);
      xhr.setRequestHeader("accept", "application/json");
      xhr.responseType = "text";
      const onAbort = () => xhr.abort();
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = () => signal?.removeEventListener("abort", onAbort);
      if (onProgress && xhr.upload) {
        xhr.upload.onprogress = (ev) => {
          onProgress({ loaded: ev.loaded, total: ev.lengthComputable ? ev.total : total });
        };
      }
      xhr.onload = () => {
        done();
        let body = null;
        try {
          body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
        } catch {
          // handled below
        }
        if (xhr.status >= 200 && xhr.status < 300 && body && body.file) {
          if (onProgress) onProgress({ loaded: total ?? 0, total });
          resolve(body.file);
          return;
        }
        const header = xhr.getResponseHeader("retry-after");
        const retry = header && Number.isFinite(Number(header)) ? Number(header) * 1000 : null;
        reject(ConfabError.fromWire(body?.error || { code: "internal", message: `HTTP ${xhr.status}` }, {
          status: xhr.status, event: route, retryAfterMs: retry,
        }));
      };
      xhr.onerror = () => { done(); reject(new ConfabError("network", "upload failed", { event: route })); };
      xhr.onabort = () => { done(); reject(new ConfabError("aborted", "upload aborted", { event: route })); };
      xhr.send(blob);
    });
  }

  return (async () => {
    let res;
    try {
      res = await fetch(base + path, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, accept: "application/json" },
        body: blob,
        signal,
        credentials: "same-origin",
        duplex: "half",
      });
    } catch (cause) {
      if (signal?.aborted) throw new ConfabError("aborted", "upload aborted", { event: route });
      throw new ConfabError("network", `upload failed: ${cause?.message || cause}`, { event: route, cause });
    }
    if (!res.ok) throw await errorOf(res, route);
    const body = await res.json();
    if (onProgress) onProgress({ loaded: total ?? 0, total });
    return body.file;
  })();
}
