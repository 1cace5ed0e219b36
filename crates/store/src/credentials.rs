//! A short-lived cache of the users that session and API-token hashes stand
//! for, so an authenticated request costs no database round trip.
//!
//! Only on PostgreSQL, and only while this store listens on the
//! `viberglass_credentials` channel: every revocation, disable, password
//! reset or admin change anywhere sends a notification there (after its
//! write), and every server's listener drops the entries it names at once.
//! If the listener's connection is lost, the cache is emptied and bypassed
//! until it listens again, so a missed notification never leaves a revoked
//! credential usable. An entry lives at most [`TTL`] (the bound when a server
//! died between a revocation's write and its notification) and never past the
//! credential's own expiry. SQLite reads are in-process and need no cache.
//!
//! The same cache, under the same rules, holds the projects read by id or
//! slug (every project-scoped request names one): a change to any project,
//! or to an integration or secret a project's view names, is announced as
//! `projects` and empties that part on every server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use viberglass_domain::{Project, User, UserId};

/// The channel revocations are announced on.
pub(crate) const CHANNEL: &str = "viberglass_credentials";
/// How long an entry is trusted without a notification.
pub(crate) const TTL: Duration = Duration::from_secs(30);
/// How often a listener checks, by a ping to itself, that it still hears.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Entries kept at most; a full cache is emptied and refills.
const CAPACITY: usize = 10_000;

/// Which credential a hash is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Session,
    Token,
}

#[derive(Debug, Clone)]
struct Entry {
    user: User,
    cached_at: Instant,
    expires_at: Option<OffsetDateTime>,
}

/// What changed: one credential, everything of one user's, or projects.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Credential(String),
    User(UserId),
    Projects,
}

impl Change {
    pub(crate) fn payload(&self) -> String {
        match self {
            Change::Credential(hash) => format!("credential:{hash}"),
            Change::User(user) => format!("user:{user}"),
            Change::Projects => "projects:all".to_owned(),
        }
    }

    fn parse(payload: &str) -> Option<Change> {
        let (kind, value) = payload.split_once(':')?;
        match kind {
            "credential" => Some(Change::Credential(value.to_owned())),
            "user" => value.parse::<uuid::Uuid>().ok().map(|u| Change::User(UserId::from_uuid(u))),
            "projects" => Some(Change::Projects),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct CredentialCache {
    /// True only while the listener is subscribed.
    live: AtomicBool,
    /// Bumped by every invalidation: a lookup that read the database before
    /// one does not store what it read.
    generation: AtomicU64,
    entries: Mutex<HashMap<(Kind, String), Entry>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Projects by `id:<uuid>` and `slug:<slug>`.
    projects: Mutex<HashMap<String, (Project, Instant)>>,
    project_hits: AtomicU64,
}

impl CredentialCache {
    pub(crate) fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, kind: Kind, hash: &str, now: OffsetDateTime) -> Option<User> {
        if !self.live() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let found = entries
            .get(&(kind, hash.to_owned()))
            .filter(|e| e.cached_at.elapsed() < TTL && e.expires_at.is_none_or(|x| x > now))
            .map(|e| e.user.clone());
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores what a lookup read, unless something was invalidated since
    /// `generation` was read (before the lookup).
    pub(crate) fn put(&self, kind: Kind, hash: &str, user: &User, expires_at: Option<OffsetDateTime>, generation: u64) {
        if !self.live() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert((kind, hash.to_owned()), Entry { user: user.clone(), cached_at: Instant::now(), expires_at });
    }

    pub(crate) fn invalidate(&self, change: &Change) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut projects = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        match change {
            Change::Credential(hash) => entries.retain(|(_, h), _| h != hash),
            Change::User(user) => entries.retain(|_, e| e.user.id != *user),
            Change::Projects => projects.clear(),
        }
    }

    /// A project by `id:<uuid>` or `slug:<slug>`, while live and fresh.
    pub(crate) fn project(&self, key: &str) -> Option<Project> {
        if !self.live() {
            return None;
        }
        let projects = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        let found = projects.get(key).filter(|(_, at)| at.elapsed() < TTL).map(|(p, _)| p.clone());
        if found.is_some() {
            self.project_hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Stores a project read from the database (under its id and its slug),
    /// unless something was invalidated since `generation` was read.
    pub(crate) fn put_project(&self, project: &Project, generation: u64) {
        if !self.live() {
            return;
        }
        let mut projects = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if projects.len() >= CAPACITY {
            projects.clear();
        }
        let now = Instant::now();
        projects.insert(format!("id:{}", project.id), (project.clone(), now));
        projects.insert(format!("slug:{}", project.slug.as_str()), (project.clone(), now));
    }

    /// Projects served from memory since start.
    pub(crate) fn project_hits(&self) -> u64 {
        self.project_hits.load(Ordering::Relaxed)
    }

    fn set_live(&self, live: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut projects = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
        projects.clear();
        self.live.store(live, Ordering::Release);
    }

    /// (hits, misses) since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

/// Ends the listener (and the wake sender) when the last clone of its store
/// is dropped.
#[derive(Debug, Default)]
pub(crate) struct ListenerStop {
    pub(crate) listener: Arc<tokio::sync::Notify>,
    pub(crate) sender: Arc<tokio::sync::Notify>,
}

impl Drop for ListenerStop {
    fn drop(&mut self) {
        self.listener.notify_one();
        self.sender.notify_one();
    }
}

/// Listens for changes until the pool closes or the store is dropped,
/// reconnecting after a lost connection.
pub(crate) async fn listen(
    pool: sqlx::PgPool,
    cache: Arc<CredentialCache>,
    wakes: Arc<crate::wake::Wakes>,
    stop: Arc<tokio::sync::Notify>,
) {
    loop {
        if pool.is_closed() {
            break;
        }
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                // Reconnecting on its own would hide a gap in which
                // notifications were missed: this loop reconnects instead.
                listener.eager_reconnect(false);
                if let Err(err) = listener.listen_all([CHANNEL, crate::wake::CHANNEL]).await {
                    tracing::warn!(error = %err, "cannot listen for credential changes; the credential cache stays off");
                } else {
                    cache.set_live(true);
                    wakes.set_live(true);
                    // A connection can die without a word (a NAT or load
                    // balancer dropping it while idle): this listener sends
                    // itself a ping every few seconds and counts itself lost
                    // when one does not come back in time.
                    let nonce = uuid::Uuid::now_v7().simple().to_string();
                    let mut ticks = tokio::time::interval(PING_EVERY);
                    let mut awaiting: Option<Instant> = None;
                    loop {
                        tokio::select! {
                            _ = stop.notified() => {
                                cache.set_live(false);
                                wakes.set_live(false);
                                return;
                            }
                            _ = ticks.tick() => {
                                if awaiting.is_some_and(|sent| sent.elapsed() > PING_EVERY) {
                                    break;
                                }
                                if awaiting.is_none() {
                                    awaiting = Some(Instant::now());
                                    let ping = sqlx::query("SELECT pg_notify($1, $2)")
                                        .bind(CHANNEL)
                                        .bind(format!("ping:{nonce}"))
                                        .execute(&pool);
                                    if tokio::time::timeout(PING_EVERY, ping).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            next = listener.try_recv() => match next {
                                Ok(Some(n)) if n.channel() == crate::wake::CHANNEL => wakes.heard(n.payload()),
                                Ok(Some(n)) => match n.payload().strip_prefix("ping:") {
                                    Some(from) => {
                                        if from == nonce {
                                            awaiting = None;
                                        }
                                    }
                                    None => match Change::parse(n.payload()) {
                                        Some(change) => cache.invalidate(&change),
                                        // Not understood (a newer server's kind?): drop everything.
                                        None => cache.set_live(true),
                                    },
                                },
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                    cache.set_live(false);
                    wakes.set_live(false);
                    tracing::warn!(
                        "lost the change listener; the credential cache is off and the dispatcher polls until it is back"
                    );
                }
            }
            Err(err) => {
                if pool.is_closed() {
                    break;
                }
                tracing::warn!(error = %err, "cannot connect the credential-change listener; retrying");
            }
        }
        tokio::select! {
            _ = stop.notified() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    cache.set_live(false);
    wakes.set_live(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        serde_json::from_value(serde_json::json!({
            "id": UserId::new(), "email": "a@example.com", "name": "A", "is_admin": false,
            "disabled_at": null, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn entries_serve_only_while_live_and_until_invalidated() {
        let cache = CredentialCache::default();
        let now = OffsetDateTime::now_utc();
        let u = user();
        cache.put(Kind::Token, "h", &u, None, cache.generation());
        assert!(cache.get(Kind::Token, "h", now).is_none(), "not live: nothing is cached");
        cache.set_live(true);
        cache.put(Kind::Token, "h", &u, None, cache.generation());
        assert_eq!(cache.get(Kind::Token, "h", now).map(|u| u.id), Some(u.id));
        assert!(cache.get(Kind::Session, "h", now).is_none(), "kinds are apart");
        cache.invalidate(&Change::User(u.id));
        assert!(cache.get(Kind::Token, "h", now).is_none());
        // A lookup that started before an invalidation stores nothing.
        let before = cache.generation();
        cache.invalidate(&Change::Credential("other".into()));
        cache.put(Kind::Token, "h", &u, None, before);
        assert!(cache.get(Kind::Token, "h", now).is_none());
        // Nor does an entry outlive its credential.
        cache.put(Kind::Token, "h", &u, Some(now - time::Duration::seconds(1)), cache.generation());
        assert!(cache.get(Kind::Token, "h", now).is_none());
        cache.put(Kind::Session, "s", &u, Some(now + time::Duration::hours(1)), cache.generation());
        cache.invalidate(&Change::Credential("s".into()));
        assert!(cache.get(Kind::Session, "s", now).is_none());
        assert_eq!(
            Change::parse(&Change::User(u.id).payload()).map(|c| c.payload()),
            Some(Change::User(u.id).payload())
        );
        assert!(Change::parse("nonsense").is_none());
    }
}
