//! Delivered and read receipts: per-member watermarks, coalesced delivered events, status.

use super::{ChatError, Hub, RoomEntry};
use crate::model::{Id, Message, MessageStatus, User, UserId, now_ms};
use crate::protocol;
use crate::store::{ReceiptUpdate, WriteOp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Who got and who read one message (the answer to `message_receipts`).
#[derive(Debug, Serialize)]
pub struct MessageReceipts {
    pub message_id: Id,
    pub status: MessageStatus,
    /// Current members other than the sender.
    pub recipients: usize,
    pub delivered: DeliveredTo,
    pub read: ReadBy,
}

#[derive(Debug, Serialize)]
pub struct DeliveredTo {
    pub count: usize,
    pub users: Vec<UserId>,
}

#[derive(Debug, Serialize)]
pub struct ReadBy {
    pub count: usize,
    pub users: Vec<Reader>,
}

#[derive(Debug, Serialize)]
pub struct Reader {
    pub user_id: UserId,
    pub read_at: Option<u64>,
}

fn private(users: &HashMap<UserId, User>, u: &UserId) -> bool {
    users.get(u).is_some_and(|u| u.private_receipts)
}

/// `read` once every other member who shares receipts read it, `delivered` once every other
/// member got it, else `sent`.
fn status_of(r: &RoomEntry, users: &HashMap<UserId, User>, m: &Message) -> MessageStatus {
    let mut recipients = 0;
    let mut delivered = true;
    let mut sharing = 0;
    let mut read = true;
    for (uid, member) in &r.members {
        if *uid == m.sender_id {
            continue;
        }
        recipients += 1;
        delivered &= member.delivered_up_to >= m.id;
        if !private(users, uid) {
            sharing += 1;
            read &= member.read_up_to >= m.id;
        }
    }
    if recipients == 0 || !delivered {
        MessageStatus::Sent
    } else if sharing > 0 && read {
        MessageStatus::Read
    } else {
        MessageStatus::Delivered
    }
}

impl Hub {
    /// Moves `user`'s delivered watermark in `room` forward (never past the newest message).
    /// Persisted and announced in the next coalesced flush.
    pub fn mark_delivered(&self, user: &UserId, room: Id, message: Id) -> Result<(), ChatError> {
        let moved = {
            let mut st = self.state.write();
            let r = st.rooms.get_mut(&room).ok_or(ChatError::NotFound("room"))?;
            let upto = message.min(r.last_message());
            let m = r.members.get_mut(user).ok_or(ChatError::NotFound("room"))?;
            if upto > m.delivered_up_to {
                m.delivered_up_to = upto;
                true
            } else {
                false
            }
        };
        if moved {
            self.live
                .lock()
                .dirty_delivered
                .insert((room, user.clone()));
        }
        Ok(())
    }

    /// Moves `user`'s read watermark forward, durably, then tells the room (unless the user
    /// keeps receipts private). Returns the read time.
    pub async fn mark_read(
        self: &Arc<Self>,
        user: &UserId,
        room: Id,
        message: Id,
    ) -> Result<u64, ChatError> {
        let (upto, delivered, private) = {
            let st = self.state.read();
            let r = st.rooms.get(&room).ok_or(ChatError::NotFound("room"))?;
            let m = r.members.get(user).ok_or(ChatError::NotFound("room"))?;
            let upto = message.min(r.last_message());
            if upto <= m.read_up_to {
                return Ok(m.read_at.unwrap_or(0));
            }
            (upto, m.delivered_up_to.max(upto), private(&st.users, user))
        };
        let read_at = now_ms();
        let update = ReceiptUpdate {
            room,
            user: user.clone(),
            delivered_up_to: delivered,
            read_up_to: upto,
            read_at: Some(read_at),
        };
        let reader = user.clone();
        self.write_then(WriteOp::SaveReceipts(vec![update]), move |hub, _| {
            let moved = {
                let mut st = hub.state.write();
                match st
                    .rooms
                    .get_mut(&room)
                    .and_then(|r| r.members.get_mut(&reader))
                {
                    Some(m) if upto > m.read_up_to => {
                        m.read_up_to = upto;
                        m.read_at = Some(read_at);
                        m.delivered_up_to = m.delivered_up_to.max(upto);
                        true
                    }
                    _ => false,
                }
            };
            if moved && !private {
                #[derive(Serialize)]
                struct Read<'a> {
                    room_id: Id,
                    user_id: &'a UserId,
                    message_id: Id,
                    read_at: u64,
                }
                let frame = protocol::event(
                    "message_read",
                    &Read {
                        room_id: room,
                        user_id: &reader,
                        message_id: upto,
                        read_at,
                    },
                );
                hub.broadcast(room, &frame);
            }
        })
        .await?;
        Ok(read_at)
    }

    /// Delivered and read state of one message, for a member of its room.
    pub async fn message_receipts(
        &self,
        user: &UserId,
        room: Id,
        message: Id,
    ) -> Result<MessageReceipts, ChatError> {
        self.require_member(room, user)?;
        let m = self
            .store
            .message(room, message)
            .await?
            .filter(|m| m.deleted_at.is_none())
            .ok_or(ChatError::NotFound("message"))?;
        let st = self.state.read();
        let r = st.rooms.get(&room).ok_or(ChatError::NotFound("room"))?;
        let mut delivered = Vec::new();
        let mut read = Vec::new();
        let mut recipients = 0;
        for (uid, member) in &r.members {
            if *uid == m.sender_id {
                continue;
            }
            recipients += 1;
            if member.delivered_up_to >= m.id {
                delivered.push(uid.clone());
            }
            if member.read_up_to >= m.id && !private(&st.users, uid) {
                read.push(Reader {
                    user_id: uid.clone(),
                    read_at: member.read_at,
                });
            }
        }
        delivered.sort();
        read.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(MessageReceipts {
            message_id: m.id,
            status: status_of(r, &st.users, &m),
            recipients,
            delivered: DeliveredTo {
                count: delivered.len(),
                users: delivered,
            },
            read: ReadBy {
                count: read.len(),
                users: read,
            },
        })
    }

    /// Sets each message's status from the room's current watermarks.
    pub(super) fn apply_status<'a>(
        &self,
        room: Id,
        messages: impl Iterator<Item = &'a mut Message>,
    ) {
        let st = self.state.read();
        let Some(r) = st.rooms.get(&room) else {
            return;
        };
        for m in messages {
            m.status = status_of(r, &st.users, m);
        }
    }

    /// Announces and persists the delivered watermarks that moved since the last flush: one
    /// `message_delivered` frame per room, one storage write for all.
    pub(super) fn flush_delivered(&self) {
        let dirty = std::mem::take(&mut self.live.lock().dirty_delivered);
        if dirty.is_empty() {
            return;
        }
        let mut by_room: BTreeMap<Id, Vec<UserId>> = BTreeMap::new();
        for (room, user) in dirty {
            by_room.entry(room).or_default().push(user);
        }
        #[derive(Serialize)]
        struct Entry {
            user_id: UserId,
            message_id: Id,
        }
        #[derive(Serialize)]
        struct Delivered {
            room_id: Id,
            receipts: Vec<Entry>,
        }
        let mut updates = Vec::new();
        let mut frames = Vec::new();
        {
            let st = self.state.read();
            for (room, users) in by_room {
                let Some(r) = st.rooms.get(&room) else {
                    continue;
                };
                let mut receipts = Vec::new();
                for u in users {
                    if let Some(m) = r.members.get(&u) {
                        updates.push(ReceiptUpdate {
                            room,
                            user: u.clone(),
                            delivered_up_to: m.delivered_up_to,
                            read_up_to: m.read_up_to,
                            read_at: m.read_at,
                        });
                        receipts.push(Entry {
                            user_id: u,
                            message_id: m.delivered_up_to,
                        });
                    }
                }
                if !receipts.is_empty() {
                    frames.push((
                        room,
                        protocol::event(
                            "message_delivered",
                            &Delivered {
                                room_id: room,
                                receipts,
                            },
                        ),
                    ));
                }
            }
        }
        for (room, frame) in frames {
            self.broadcast(room, &frame);
        }
        if !updates.is_empty()
            && let Err(e) = self
                .store
                .submit(WriteOp::SaveReceipts(updates), Box::new(|_| {}))
        {
            tracing::warn!(error = %e, "could not persist delivered receipts");
        }
    }
}
