// The seed's chat stack, only for measuring (benches/compare.sh): a Node Socket.io v4 server that
// joins each socket to one room, and on `send_message` assigns an id, optionally inserts the
// message into PostgreSQL (one durable INSERT per message), broadcasts `receive_message` to the
// room (sender included) and acks `{id}`. With --redis the broadcast goes through the Redis
// Pub/Sub adapter, as the seed prescribes for running several instances.
//
//   node server.js --listen 127.0.0.1:0 [--pg postgres://…] [--redis redis://…]
//
// Prints `listening on http://ADDR` on stdout once listening. Clients connect with
// /socket.io/?EIO=4&transport=websocket&user=<i>&room=r<k>.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

function parseArgs(argv) {
  const args = { listen: '127.0.0.1:0', pg: null, redis: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const key = flag.replace(/^--/, '');
    if (!Object.hasOwn(args, key) || !flag.startsWith('--') || i + 1 >= argv.length) {
      console.error('usage: node server.js --listen HOST:PORT [--pg postgres://…] [--redis redis://…]');
      process.exit(2);
    }
    args[key] = argv[++i];
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const sep = args.listen.lastIndexOf(':');
  const host = args.listen.slice(0, sep);
  const port = Number(args.listen.slice(sep + 1));

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ['websocket'],
    perMessageDeflate: false, // Confab and the ceiling don't compress either
    serveClient: false,
  });

  let pool = null;
  if (args.pg) {
    const { Pool } = require('pg');
    pool = new Pool({ connectionString: args.pg, max: 10 });
    await pool.query(`CREATE TABLE IF NOT EXISTS messages (
      id bigserial PRIMARY KEY,
      room_id text NOT NULL,
      sender_id text NOT NULL,
      client_msg_id text NOT NULL,
      type text NOT NULL DEFAULT 'text',
      content text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      UNIQUE (sender_id, client_msg_id))`);
    await pool.query('CREATE INDEX IF NOT EXISTS messages_room_created ON messages (room_id, created_at)');
  }

  let pubClient = null;
  let subClient = null;
  if (args.redis) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    pubClient = createClient({ url: args.redis });
    subClient = pubClient.duplicate();
    pubClient.on('error', (e) => console.error('redis pub:', e.message));
    subClient.on('error', (e) => console.error('redis sub:', e.message));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
  }

  // Without --pg: ids from a process counter (increasing, so increasing per room too).
  let nextId = 0;

  // With --pg: the id is the bigserial from the INSERT, and a message is broadcast and acked
  // only once its INSERT committed. Concurrent INSERTs on different pool connections can commit
  // out of id order, so INSERTs are chained per room: one at a time per room (rooms still run in
  // parallel, up to the pool size), which keeps each room's delivery order equal to its id order.
  const roomChains = new Map();
  function inRoomOrder(room, job) {
    const prev = roomChains.get(room) || Promise.resolve();
    const next = prev.then(job, job);
    const tail = next.catch(() => {});
    roomChains.set(room, tail);
    tail.then(() => {
      if (roomChains.get(room) === tail) roomChains.delete(room);
    });
    return next;
  }

  async function store(msg) {
    // Idempotent on (sender_id, client_msg_id): a retried message gets its original id back and is
    // not broadcast again.
    const ins = await pool.query(
      `INSERT INTO messages (room_id, sender_id, client_msg_id, type, content)
       VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (sender_id, client_msg_id) DO NOTHING
       RETURNING id, created_at`,
      [msg.room_id, msg.sender_id, msg.client_msg_id, msg.type, msg.content],
    );
    if (ins.rows.length === 1) {
      return { id: ins.rows[0].id, created_at: ins.rows[0].created_at.toISOString(), fresh: true };
    }
    const old = await pool.query(
      'SELECT id FROM messages WHERE sender_id = $1 AND client_msg_id = $2',
      [msg.sender_id, msg.client_msg_id],
    );
    return { id: old.rows[0].id, fresh: false };
  }

  io.use((socket, next) => {
    const { room, user } = socket.handshake.query;
    if (typeof room !== 'string' || room === '' || typeof user !== 'string' || user === '') {
      return next(new Error('room and user query parameters are required'));
    }
    socket.data.room = room;
    socket.data.senderId = `u${user}`;
    next();
  });

  io.on('connection', (socket) => {
    socket.join(socket.data.room);

    socket.on('send_message', (data, ack) => {
      const reply = typeof ack === 'function' ? ack : () => {};
      if (data === null || typeof data !== 'object') return reply({ error: 'bad_request' });
      const room = data.room_id === undefined ? socket.data.room : data.room_id;
      const { client_msg_id: clientMsgId, content } = data;
      const type = data.type === undefined ? 'text' : data.type;
      if (typeof room !== 'string' || typeof clientMsgId !== 'string' || typeof type !== 'string'
          || typeof content !== 'string' || content.length === 0 || content.length > 4000) {
        return reply({ error: 'bad_request' });
      }
      if (!socket.rooms.has(room)) return reply({ error: 'not_member' });

      const msg = {
        id: null,
        room_id: room,
        sender_id: socket.data.senderId,
        client_msg_id: clientMsgId,
        type,
        content,
        created_at: null,
      };

      if (!pool) {
        msg.id = String(++nextId);
        msg.created_at = new Date().toISOString();
        io.to(room).emit('receive_message', msg);
        return reply({ id: msg.id });
      }

      inRoomOrder(room, async () => {
        let stored;
        try {
          stored = await store(msg);
        } catch (e) {
          console.error('insert failed:', e.message);
          return reply({ error: 'db_error' });
        }
        msg.id = stored.id;
        if (stored.fresh) {
          msg.created_at = stored.created_at;
          io.to(room).emit('receive_message', msg);
        }
        reply({ id: msg.id });
      });
    });
  });

  async function shutdown() {
    io.close();
    await Promise.allSettled([
      pool ? pool.end() : null,
      pubClient ? pubClient.quit() : null,
      subClient ? subClient.quit() : null,
    ]);
    process.exit(0);
  }
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  httpServer.listen(port, host, () => {
    const a = httpServer.address();
    const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    console.log(`listening on http://${shown}:${a.port}`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
