//! Who is acting: the caller of an operation, how it proved who it is, the
//! audit log it leaves, and token hashing. Below both the HTTP guard
//! (`auth`) and the services, so neither has to import the other, and the
//! guard never imports the engine.

use sha2::{Digest, Sha256};
use viberglass_domain::{ProjectId, User, UserId};
use viberglass_store::NewAudit;

use crate::AppState;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Session,
    Token,
    /// `AUTH_DISABLED`: nobody signed in; acts as an administrator.
    Nobody,
    /// A Slack user, mapped to this user by e-mail (the request was signed by Slack).
    Slack,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Option<User>,
    pub via: Via,
}

impl Caller {
    pub fn user_id(&self) -> Option<UserId> {
        self.user.as_ref().map(|u| u.id)
    }

    pub fn is_admin(&self) -> bool {
        self.via == Via::Nobody || self.user.as_ref().is_some_and(|u| u.is_admin)
    }

    /// For messages and logs: the e-mail, or "local development".
    pub fn label(&self) -> String {
        self.user.as_ref().map_or_else(|| "local development (AUTH_DISABLED)".to_owned(), |u| u.email.clone())
    }

    /// The user whose memberships narrow lists: none for admins.
    pub fn member_filter(&self) -> Option<UserId> {
        if self.is_admin() { None } else { self.user_id() }
    }

    /// The channel audit entries record.
    pub fn channel(&self) -> &'static str {
        match self.via {
            Via::Session => "ui",
            Via::Token => "api",
            Via::Nobody => "api",
            Via::Slack => "slack",
        }
    }
}

/// sha256 of a token (a session, an API token or a worker's job token), as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new worker token and the hash the database keeps.
pub fn mint_token() -> (String, String) {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let hash = hash_token(&token);
    (token, hash)
}

/// Records a security or workflow event in the audit log; a failure to
/// record is logged, never hidden.
pub async fn audit(
    state: &AppState,
    caller: Option<&Caller>,
    action: &str,
    target_kind: &str,
    target_id: Option<String>,
    project_id: Option<ProjectId>,
    details: serde_json::Value,
) {
    let entry = audit_entry(caller, action, target_kind, target_id, project_id, details);
    if let Err(e) = state.store.append_audit(entry).await {
        tracing::error!(error = %e, action, "could not write the audit log");
    }
}

/// The audit entry [`audit`] writes, for a write that commits it itself.
pub fn audit_entry(
    caller: Option<&Caller>,
    action: &str,
    target_kind: &str,
    target_id: Option<String>,
    project_id: Option<ProjectId>,
    details: serde_json::Value,
) -> NewAudit {
    NewAudit {
        actor_id: caller.and_then(Caller::user_id),
        channel: caller.map_or("api", Caller::channel).to_owned(),
        action: action.to_owned(),
        target_kind: target_kind.to_owned(),
        target_id,
        project_id,
        details,
        request_id: crate::request::current_request_id(),
    }
}
