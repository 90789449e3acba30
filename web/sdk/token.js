// JWT helpers shared by the SDK and the UI.

/** The `exp` claim of a JWT in milliseconds, or null (the signature is not checked here). */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const json = JSON.parse(atob(b64));
    return Number.isFinite(json.exp) ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}
