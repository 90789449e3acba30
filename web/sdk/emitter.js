// A small typed-event emitter. Listeners run synchronously in the order they were added; a
// listener that throws does not stop the others nor the SDK: the exception is reported the
// way the platform reports uncaught errors (window `error` event / console).

function report(err) {
  if (typeof globalThis.reportError === "function") {
    globalThis.reportError(err);
  } else {
    setTimeout(() => { throw err; }, 0);
  }
}

export class Emitter {
  #listeners = new Map();

  /**
   * Adds a listener. Returns a function that removes it.
   * @param {string} name
   * @param {(payload: any) => void} fn
   */
  on(name, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = this.#listeners.get(name);
    if (!set) {
      set = new Set();
      this.#listeners.set(name, set);
    }
    set.add(fn);
    return () => this.off(name, fn);
  }

  /** Removes a listener added with `on`. */
  off(name, fn) {
    const set = this.#listeners.get(name);
    if (set) {
      set.delete(fn);
      if (set.size === 0) this.#listeners.delete(name);
    }
  }

  /** Calls `fn` once, at the next `name` event. Returns a function that cancels it. */
  once(name, fn) {
    const off = this.on(name, (payload) => {
      off();
      fn(payload);
    });
    return off;
  }

  /** Whether anyone listens to `name`. */
  listens(name) {
    return this.#listeners.has(name);
  }

  emit(name, payload) {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        report(err);
      }
    }
  }
}
