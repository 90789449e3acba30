// Confab JavaScript SDK: the entry point. Plain ES2022 modules, no dependencies, no build step.
// Served by the Confab server at /sdk/confab.js. Documentation: docs/sdk.md.
//
//   import { ConfabClient } from "https://chat.example.com/sdk/confab.js";
//   const client = new ConfabClient({ url: "https://chat.example.com", getToken });
//   client.on("message", ({ kind, message }) => render(kind, message));
//   await client.sendMessage(roomId, "hello");

export { ConfabClient, SDK_VERSION, uuidv7 } from "./client.js";
export { ConfabError, CLIENT_ERROR_CODES } from "./errors.js";
export {
  ID_EPOCH_MS, compareIds, maxId, isId, toId, idAtTime, timeOfId, previousId, nextId,
} from "./ids.js";
