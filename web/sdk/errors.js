// ConfabError: every rejection and every `error` event of the SDK is one of these.

/**
 * Codes the SDK itself produces, besides the server's (docs/protocol.md, "Errors"):
 *
 * - `timeout`: no answer within the request's timeout (the request may still have been applied).
 * - `disconnected`: the connection dropped while a request that is not safe to repeat was in
 *   flight; it may or may not have been applied.
 * - `closed`: `client.close()` was called.
 * - `cancelled`: a pending message was discarded with `discardPending()`.
 * - `network`: an HTTP request failed before an answer (offline, DNS, CORS, ...).
 * - `aborted`: an upload was aborted through its `signal`.
 * - `token_expired`: the token expired and there is no `getToken` to get a new one.
 * - `token_refresh_failed`: `getToken()` threw or returned something that is not a token.
 * - `policy`: the server closed the connection for sustained abuse of its limits (1008).
 * - `protocol`: the server sent something the SDK does not understand, or closed with a
 *   protocol-level code (1002, 1007, 1009, 1011).
 */
export const CLIENT_ERROR_CODES = Object.freeze([
  "timeout", "disconnected", "closed", "cancelled", "network", "aborted",
  "token_expired", "token_refresh_failed", "policy", "protocol",
]);

export class ConfabError extends Error {
  /**
   * @param {string} code stable code: the server's (`not_found`, `rate_limited`, ...) or one of
   *   CLIENT_ERROR_CODES
   * @param {string} message human-readable text
   * @param {{retryAfterMs?: number|null, status?: number|null, event?: string|null, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message || code, extra.cause !== undefined ? { cause: extra.cause } : undefined);
    this.name = "ConfabError";
    /** @type {string} */
    this.code = code;
    /** Milliseconds to wait before retrying (`rate_limited`), else null. */
    this.retryAfterMs = extra.retryAfterMs ?? null;
    /** The HTTP status for REST errors, else null. */
    this.status = extra.status ?? null;
    /** The request event (`history`, `send_message`, ...) or REST route, when known. */
    this.event = extra.event ?? null;
  }

  /** Builds an error from the `data` of an `error` frame or the `error` of a REST answer. */
  static fromWire(data, extra = {}) {
    const code = data && typeof data.code === "string" ? data.code : "internal";
    const message = data && typeof data.message === "string" ? data.message : code;
    const retry = data && Number.isFinite(data.retry_after_ms) ? data.retry_after_ms : null;
    return new ConfabError(code, message, { ...extra, retryAfterMs: retry ?? extra.retryAfterMs });
  }
}
