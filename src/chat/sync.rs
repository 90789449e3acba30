//! Catch-up after a disconnect: a room's changes since a cursor, and the switch to live
//! traffic decided on the storage writer's thread so nothing falls between the two.

use super::{ChatError, Connection, Hub};
use crate::model::{Change, Id};
use crate::protocol;
use crate::store::{WriteOp, WriteOutput};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Default and largest number of changes per room in one `sync` answer.
const DEFAULT_LIMIT: u32 = 200;
const MAX_LIMIT: u32 = 500;

/// The answer to `sync`.
#[derive(Debug, Serialize, Default)]
pub struct SyncAnswer {
    pub rooms: BTreeMap<Id, RoomChanges>,
    pub missing: Vec<Id>,
    /// True once the connection receives live events (nothing left to catch up).
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct RoomChanges {
    pub changes: Vec<Change>,
    pub has_more: bool,
}

impl Hub {
    /// Catches a connection up on `rooms` (room → last seq seen). A catching-up connection
    /// goes live in the same step that reads its last page, on the writer thread, so every
    /// change is either in a page or delivered live, never both and never neither.
    ///
    /// Returns the answer for the caller to send, or `None` when it was already queued on the
    /// connection (a catching-up connection's answer must precede its first live event).
    pub async fn sync(
        self: &Arc<Self>,
        conn: &Arc<Connection>,
        rooms: Vec<(Id, Id)>,
        limit: Option<u32>,
        reference: Option<String>,
    ) -> Result<Option<SyncAnswer>, ChatError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=MAX_LIMIT).contains(&l) => l,
            Some(_) => {
                return Err(ChatError::Invalid(format!("limit must be 1-{MAX_LIMIT}")));
            }
        } as usize;
        if rooms.len() > self.limits.max_rooms_per_user {
            return Err(ChatError::Invalid("too many rooms in one sync".into()));
        }
        if conn.is_live() {
            // A plain catch-up read: live events may overlap it; clients drop duplicates.
            let hub = self.clone();
            let user = conn.user.clone();
            return tokio::task::spawn_blocking(move || {
                hub.read_changes(&user, &rooms, Id(u64::MAX), limit)
            })
            .await
            .map_err(|_| ChatError::Unavailable("sync was interrupted"))?
            .map(|mut a| {
                a.live = true;
                Some(a)
            });
        }
        let conn2 = conn.clone();
        self.write_then(WriteOp::Barrier, move |hub, out| {
            let WriteOutput::Barrier { last_id } = out else {
                return;
            };
            // Everything up to `last_id` is committed and was fanned out before now, while
            // this connection was not live: it must come from the page.
            let (frame, live) = match hub.read_changes(&conn2.user, &rooms, *last_id, limit) {
                Ok(mut answer) => {
                    answer.live = answer.rooms.values().all(|r| !r.has_more);
                    (protocol::ack(reference.as_deref(), &answer), answer.live)
                }
                Err(e) => (
                    protocol::error(reference.as_deref(), &hub.wire_error(&e)),
                    false,
                ),
            };
            // The answer is queued before the connection can receive any live event.
            conn2.outbox.push(frame);
            if live {
                hub.go_live(&conn2);
            }
        })
        .await?;
        Ok(None)
    }

    fn read_changes(
        &self,
        user: &crate::model::UserId,
        rooms: &[(Id, Id)],
        upto: Id,
        limit: usize,
    ) -> Result<SyncAnswer, ChatError> {
        let mut answer = SyncAnswer::default();
        // The whole answer must fit the connection's outbound queue with room to spare.
        let mut budget = self.limits.outbound_queue_bytes / 2;
        for (room, since) in rooms {
            if self.is_member(*room, user).is_none() {
                answer.missing.push(*room);
                continue;
            }
            let (mut changes, has_more) =
                self.store
                    .changes_since_blocking(*room, *since, upto, limit, &mut budget)?;
            self.apply_status(*room, changes.iter_mut().map(|c| &mut c.message));
            answer
                .rooms
                .insert(*room, RoomChanges { changes, has_more });
        }
        Ok(answer)
    }
}
