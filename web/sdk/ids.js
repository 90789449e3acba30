// Confab ids: 64-bit integers carried as decimal strings (message, room, upload ids and
// change `seq`s). JavaScript numbers lose precision past 2^53, so ids are never converted to
// numbers here: they compare by (length, lexicographic order) on their canonical form, which
// is exactly their numeric order.

/** 2025-01-01T00:00:00Z in Unix milliseconds: the epoch of the time part of an id. */
export const ID_EPOCH_MS = 1735689600000;
/** Bits below the millisecond part of an id (10 bits of node, 12 bits of sequence). */
const TIME_SHIFT = 22n;

const DECIMAL = /^[0-9]+$/;

/** Whether `v` is an id in canonical decimal form ("0", "7263112342016", not "007"). */
export function isId(v) {
  return typeof v === "string" && v.length > 0 && v.length <= 20 && DECIMAL.test(v) &&
    (v.length === 1 || v[0] !== "0");
}

/** An id as a canonical decimal string (accepts a string, a bigint or a safe integer). */
export function toId(v) {
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`not an id: ${v}`);
    return String(v);
  }
  if (typeof v === "string" && DECIMAL.test(v)) {
    const s = v.replace(/^0+(?=.)/, "");
    if (s.length <= 20) return s;
  }
  throw new TypeError(`not an id: ${String(v)}`);
}

/** Compares two ids: negative when a < b, 0 when equal, positive when a > b. */
export function compareIds(a, b) {
  if (a === b) return 0;
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : 1;
}

/** The larger of two ids (`null`/`undefined` count as smaller than any id). */
export function maxId(a, b) {
  if (a == null) return b ?? null;
  if (b == null) return a;
  return compareIds(a, b) >= 0 ? a : b;
}

/** The smallest id whose time part is `ms` (Unix milliseconds), as a string. */
export function idAtTime(ms) {
  const t = Math.floor(ms) - ID_EPOCH_MS;
  if (!(t > 0)) return "0";
  return (BigInt(t) << TIME_SHIFT).toString();
}

/** The time (Unix milliseconds) an id was made at. */
export function timeOfId(id) {
  return Number(BigInt(id) >> TIME_SHIFT) + ID_EPOCH_MS;
}

/** `id - 1` (for "everything at or after id"), never below "0". */
export function previousId(id) {
  const n = BigInt(id);
  return n > 0n ? (n - 1n).toString() : "0";
}

/** `id + 1` (for "everything at or before id" with `history` `before`). */
export function nextId(id) {
  return (BigInt(id) + 1n).toString();
}
