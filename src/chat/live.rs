//! Ephemeral state: presence (online/offline with a grace), typing indicators, and the ticker
//! that expires them and flushes coalesced receipts. Nothing here is stored but `last_seen`.

use super::{ChatError, Connection, Hub};
use crate::model::{Id, User, UserId, now_ms};
use crate::protocol;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A typing indicator expires this long after its last `start`.
const TYPING_TTL: Duration = Duration::from_secs(5);
/// A repeated `start` within this is not relayed again.
const TYPING_THROTTLE: Duration = Duration::from_secs(2);
/// Delivered receipts are announced and persisted this often.
const DELIVERED_FLUSH: Duration = Duration::from_millis(500);
/// The ticker's period.
const TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
pub(super) struct LiveState {
    presence: HashMap<UserId, PresenceEntry>,
    typing: HashMap<(Id, UserId), TypingEntry>,
    pub(super) dirty_delivered: HashSet<(Id, UserId)>,
    last_flush: Option<Instant>,
    last_forget: Option<Instant>,
}

struct PresenceEntry {
    connections: usize,
    /// Set when the last connection closed: the user turns offline at this instant unless a
    /// connection comes back first.
    offline_at: Option<Instant>,
}

struct TypingEntry {
    expires: Instant,
    relayed: Instant,
}

impl LiveState {
    pub(super) fn connections(&self, user: &UserId) -> usize {
        self.presence.get(user).map_or(0, |p| p.connections)
    }
}

#[derive(Serialize)]
struct Presence<'a> {
    user_id: &'a UserId,
    status: &'static str,
    last_seen: Option<u64>,
}

#[derive(Serialize)]
struct Typing<'a> {
    room_id: Id,
    user_id: &'a UserId,
    state: &'static str,
}

impl Hub {
    pub(super) fn user_connected(self: &Arc<Self>, user: &UserId) {
        let came_online = {
            let mut live = self.live.lock();
            let e = live.presence.entry(user.clone()).or_insert(PresenceEntry {
                connections: 0,
                offline_at: None,
            });
            e.connections += 1;
            // Back within the grace: nobody saw them leave, so nobody sees them return.
            let within_grace = e.offline_at.take().is_some();
            e.connections == 1 && !within_grace
        };
        if came_online {
            self.announce_presence(user, "online", None);
        }
    }

    pub(super) fn user_disconnected(&self, user: &UserId) {
        let mut live = self.live.lock();
        if let Some(e) = live.presence.get_mut(user) {
            e.connections = e.connections.saturating_sub(1);
            if e.connections == 0 {
                e.offline_at = Some(
                    Instant::now() + Duration::from_secs(self.presence_cfg.offline_grace_secs),
                );
            }
        }
    }

    /// `online` while the user has a connection (or is inside the offline grace).
    pub(super) fn presence_of(&self, user: &UserId) -> &'static str {
        if self.live.lock().presence.contains_key(user) {
            "online"
        } else {
            "offline"
        }
    }

    /// Tells every user who shares a room with `user` (never `user` themself), in rooms up to
    /// `presence.push_max_room_members`: beyond that, a reconnect wave would cost members²
    /// frames, and clients ask `list_members` instead.
    fn announce_presence(&self, user: &UserId, status: &'static str, last_seen: Option<u64>) {
        let frame = protocol::event(
            "presence",
            &Presence {
                user_id: user,
                status,
                last_seen,
            },
        );
        let st = self.state.read();
        let mut peers: HashSet<&UserId> = HashSet::new();
        for room in st.user_rooms.get(user).into_iter().flatten() {
            if let Some(r) = st.rooms.get(room)
                && r.members.len() <= self.presence_cfg.push_max_room_members
            {
                peers.extend(r.members.keys().filter(|u| *u != user));
            }
        }
        let conns = self.conns.read();
        for peer in peers {
            for (_, ob) in conns.get(peer).into_iter().flatten() {
                ob.push(frame.clone());
            }
        }
    }

    /// `typing {room_id, state}` from a connection: relayed to the other members, throttled,
    /// expiring by itself.
    pub fn typing(&self, conn: &Connection, room: Id, state: &str) -> Result<(), ChatError> {
        let start = match state {
            "start" => true,
            "stop" => false,
            _ => return Err(ChatError::Invalid("state must be start or stop".into())),
        };
        conn.take_typing_token()?;
        self.require_member(room, &conn.user)?;
        let now = Instant::now();
        let key = (room, conn.user.clone());
        let relay = {
            let mut live = self.live.lock();
            if start {
                match live.typing.get_mut(&key) {
                    Some(e) if now.duration_since(e.relayed) < TYPING_THROTTLE => {
                        e.expires = now + TYPING_TTL;
                        false
                    }
                    _ => {
                        live.typing.insert(
                            key,
                            TypingEntry {
                                expires: now + TYPING_TTL,
                                relayed: now,
                            },
                        );
                        true
                    }
                }
            } else {
                live.typing.remove(&key).is_some()
            }
        };
        if relay {
            self.relay_typing(room, &conn.user, if start { "start" } else { "stop" });
        }
        Ok(())
    }

    fn relay_typing(&self, room: Id, user: &UserId, state: &'static str) {
        let frame = protocol::event(
            "typing",
            &Typing {
                room_id: room,
                user_id: user,
                state,
            },
        );
        let st = self.state.read();
        let Some(r) = st.rooms.get(&room) else {
            return;
        };
        let conns = self.conns.read();
        for member in r.members.keys().filter(|u| *u != user) {
            for (_, ob) in conns.get(member).into_iter().flatten() {
                ob.push(frame.clone());
            }
        }
    }

    /// Expires typing indicators and presence graces, flushes delivered receipts.
    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let (expired_typing, gone, flush, forget) = {
            let mut live = self.live.lock();
            let expired: Vec<(Id, UserId)> = live
                .typing
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &expired {
                live.typing.remove(k);
            }
            let gone: Vec<UserId> = live
                .presence
                .iter()
                .filter(|(_, p)| p.connections == 0 && p.offline_at.is_some_and(|t| t <= now))
                .map(|(u, _)| u.clone())
                .collect();
            for u in &gone {
                live.presence.remove(u);
            }
            let flush = live
                .last_flush
                .is_none_or(|t| now.duration_since(t) >= DELIVERED_FLUSH);
            if flush {
                live.last_flush = Some(now);
            }
            let forget = live.last_forget.is_none_or(|t| {
                now.duration_since(t) >= Duration::from_secs(self.rate.forget_idle_secs)
            });
            if forget {
                live.last_forget = Some(now);
            }
            (expired, gone, flush, forget)
        };
        for (room, user) in expired_typing {
            self.relay_typing(room, &user, "stop");
        }
        for user in gone {
            // Persist last_seen first, so anyone who reads the members list after the
            // `presence` event sees it.
            let seen = now_ms();
            let record = {
                let st = self.state.read();
                let mut u = st
                    .users
                    .get(&user)
                    .cloned()
                    .unwrap_or_else(|| User::new(user.clone(), user.to_string()));
                u.last_seen = Some(seen);
                u
            };
            let hub = self.clone();
            let saved = record.clone();
            let res = self.store.submit(
                crate::store::WriteOp::SaveUser(record),
                Box::new(move |r| {
                    if r.is_ok() {
                        hub.state.write().users.insert(saved.id.clone(), saved);
                    }
                    // Back online meanwhile: their `online` already went out; stay quiet.
                    if !hub.live.lock().presence.contains_key(&user) {
                        hub.announce_presence(&user, "offline", Some(seen));
                    }
                }),
            );
            if let Err(e) = res {
                tracing::warn!(error = %e, "could not record last_seen");
            }
        }
        if flush {
            self.flush_delivered();
        }
        if forget {
            self.user_messages.forget_idle();
            self.user_joins.forget_idle();
            self.user_uploads.forget_idle();
        }
    }

    /// Runs `tick` until the hub is dropped or the task is aborted.
    pub fn start_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(hub) => hub.tick(),
                    None => return,
                }
            }
        })
    }
}
