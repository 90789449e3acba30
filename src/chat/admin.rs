//! First-run setup, the administrators, the registration mode and invites.

use super::{ChatError, Hub, RoomInfo};
use crate::model::{Account, Invite, Registration, ServerSettings, UserId, Visibility, now_ms};
use crate::store::{WriteOp, WriteOutput};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Longest invite lifetime an administrator may ask for.
const MAX_INVITE_TTL_SECS: u64 = 90 * 86_400;

/// The registration mode and administrators, as the API shows them.
#[derive(Debug, serde::Serialize)]
pub struct AdminSettings {
    pub registration: Registration,
    pub admins: Vec<UserId>,
}

/// Server state kept beside the chat state: settings and the one-time setup token.
pub(super) struct AdminState {
    pub settings: ServerSettings,
    /// Present while no administrator exists; made anew at every start.
    pub setup_token: Option<String>,
    /// `auth.registration` from the configuration.
    pub configured: Registration,
}

impl AdminState {
    pub fn new(settings: ServerSettings, configured: Registration) -> Self {
        let setup_token = settings.admins.is_empty().then(|| {
            let bytes: [u8; 16] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        });
        Self {
            settings,
            setup_token,
            configured,
        }
    }

    fn registration(&self) -> Registration {
        match (self.configured, self.settings.registration) {
            (Registration::Closed, _) => Registration::Closed,
            (_, Some(chosen)) => chosen,
            (configured, None) => configured,
        }
    }
}

fn same_secret(a: &str, b: &str) -> bool {
    // Comparing digests keeps the comparison's time independent of where the strings differ.
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

impl Hub {
    /// The one-time setup token, while the server has no administrator.
    pub fn setup_token(&self) -> Option<String> {
        self.admin.read().setup_token.clone()
    }

    /// Who may register now.
    pub fn registration(&self) -> Registration {
        self.admin.read().registration()
    }

    pub fn is_admin(&self, user: &UserId) -> bool {
        self.admin.read().settings.admins.contains(user)
    }

    fn require_admin(&self, user: &UserId) -> Result<(), ChatError> {
        if self.is_admin(user) {
            Ok(())
        } else {
            Err(ChatError::Forbidden("only an administrator may do this"))
        }
    }

    /// First-run setup: checks the token, creates the administrator's account and a first
    /// public room they own.
    pub async fn setup(
        self: &Arc<Self>,
        token: &str,
        username: String,
        account: Account,
        room_name: &str,
    ) -> Result<RoomInfo, ChatError> {
        {
            let a = self.admin.read();
            match &a.setup_token {
                None => return Err(ChatError::Conflict("this server is already set up")),
                Some(t) if !same_secret(t, token) => {
                    return Err(ChatError::Forbidden("wrong setup token"));
                }
                Some(_) => {}
            }
        }
        let user = account.user_id.clone();
        let name = account.display_name.clone();
        let out = self
            .write_then(WriteOp::ClaimAdmin { username, account }, |hub, out| {
                if let WriteOutput::SettingsSaved(s) = out {
                    let mut a = hub.admin.write();
                    a.settings = s.clone();
                    a.setup_token = None;
                }
            })
            .await
            .map_err(|e| match e {
                ChatError::Conflict(_) => {
                    ChatError::Conflict("that username is taken, or the server is set up")
                }
                other => other,
            })?;
        drop(out);
        self.remember_name(&user, &name);
        tracing::info!(admin = %user, "first-run setup done");
        self.create_room(&user, room_name, "", Visibility::Public)
            .await
    }

    /// The settings, for an administrator.
    pub fn admin_settings(&self, user: &UserId) -> Result<AdminSettings, ChatError> {
        self.require_admin(user)?;
        let a = self.admin.read();
        Ok(AdminSettings {
            registration: a.registration(),
            admins: a.settings.admins.clone(),
        })
    }

    /// Switches registration between open and invite-only.
    pub async fn set_registration(
        self: &Arc<Self>,
        user: &UserId,
        mode: Registration,
    ) -> Result<AdminSettings, ChatError> {
        self.require_admin(user)?;
        if mode == Registration::Closed {
            return Err(ChatError::Invalid(
                "registration may be open or invite; closed is set in the configuration".into(),
            ));
        }
        if self.admin.read().configured == Registration::Closed {
            return Err(ChatError::Forbidden(
                "registration is closed by the configuration (auth.registration)",
            ));
        }
        let mut settings = self.admin.read().settings.clone();
        settings.registration = Some(mode);
        self.write_then(WriteOp::SaveSettings(settings), |hub, out| {
            if let WriteOutput::SettingsSaved(s) = out {
                hub.admin.write().settings = s.clone();
            }
        })
        .await?;
        self.admin_settings(user)
    }

    /// Makes an invite code.
    pub async fn create_invite(
        self: &Arc<Self>,
        user: &UserId,
        max_uses: Option<u32>,
        ttl_secs: Option<u64>,
    ) -> Result<Invite, ChatError> {
        self.require_admin(user)?;
        let max_uses = max_uses.unwrap_or(1);
        if !(1..=1000).contains(&max_uses) {
            return Err(ChatError::Invalid("max_uses must be 1-1000".into()));
        }
        let ttl = ttl_secs.unwrap_or(7 * 86_400);
        if !(60..=MAX_INVITE_TTL_SECS).contains(&ttl) {
            return Err(ChatError::Invalid(format!(
                "ttl_secs must be 60-{MAX_INVITE_TTL_SECS}"
            )));
        }
        let bytes: [u8; 12] = rand::random();
        let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = now_ms();
        let invite = Invite {
            code,
            created_by: user.clone(),
            created_at: now,
            expires_at: now + ttl * 1000,
            max_uses,
            uses: 0,
        };
        self.store
            .write(WriteOp::SaveInvite(invite.clone()))
            .await?;
        Ok(invite)
    }

    pub async fn invites(&self, user: &UserId) -> Result<Vec<Invite>, ChatError> {
        self.require_admin(user)?;
        Ok(self.store.invites().await?)
    }

    pub async fn delete_invite(&self, user: &UserId, code: &str) -> Result<(), ChatError> {
        self.require_admin(user)?;
        match self
            .store
            .write(WriteOp::DeleteInvite(code.to_owned()))
            .await?
        {
            WriteOutput::InviteDeleted { removed: true } => Ok(()),
            _ => Err(ChatError::NotFound("invite")),
        }
    }
}
