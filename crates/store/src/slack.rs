//! Slack: the installation's app (one row), threads bound to tickets, the
//! messages kept in Slack (posted once, then edited in place: each has a
//! version, and the newest is what gets sent), what Slack sent that is still
//! to act on (the inbox, so an acknowledged request survives a crash), and
//! the signatures already seen.
//!
//! Posts and inbox items are claimed like feedback: a guarded update moves
//! `next_attempt_at` to the end of a lease, and only the holder of that exact
//! lease may record the outcome, so several servers never send one twice.

use time::OffsetDateTime;
use viberglass_domain::slack::NewSlackSettings;
use viberglass_domain::{SlackPost, SlackSettings, SlackThread, SlackThreadId, TicketId, UserId};

use crate::dbtime::DbTime;
use crate::rows::{RowExt, parse_stored};
use crate::{Store, StoreError, on_pool};

const THREAD: &str = "slack thread";
const POST: &str = "Slack message";

const SELECT_SETTINGS: &str = "SELECT signing_secret, bot_token_secret, api_url, team_id, team_name, bot_user_id, \
     tested_at, test_error, updated_at FROM slack_settings WHERE id = 1";
const PUT_SETTINGS: &str = "INSERT INTO slack_settings (id, signing_secret, bot_token_secret, api_url, created_at, \
     updated_at) VALUES (1, $1, $2, $3, $4, $4) ON CONFLICT (id) DO UPDATE SET signing_secret = excluded.signing_secret, \
     bot_token_secret = excluded.bot_token_secret, api_url = excluded.api_url, team_id = NULL, team_name = NULL, \
     bot_user_id = NULL, tested_at = NULL, test_error = NULL, updated_at = excluded.updated_at";
const RECORD_TEST_OK: &str = "UPDATE slack_settings SET team_id = $1, team_name = $2, bot_user_id = $3, \
     tested_at = $4, test_error = NULL WHERE id = 1";
const RECORD_TEST_FAILED: &str = "UPDATE slack_settings SET tested_at = $1, test_error = $2 WHERE id = 1";
const DELETE_SETTINGS: &str = "DELETE FROM slack_settings WHERE id = 1";

const SEE_SIGNATURE: &str =
    "INSERT INTO slack_signatures (signature, seen_at) VALUES ($1, $2) ON CONFLICT (signature) DO NOTHING";
const PRUNE_SIGNATURES: &str = "DELETE FROM slack_signatures WHERE seen_at < $1";

const ENQUEUE: &str = "INSERT INTO slack_inbox (id, dedupe, kind, payload, status, next_attempt_at, created_at, \
     updated_at) VALUES ($1, $2, $3, $4, 'pending', $5, $5, $5) ON CONFLICT (dedupe) DO NOTHING";
const DUE_INBOX: &str = "SELECT id, kind, payload, attempts, next_attempt_at FROM slack_inbox \
     WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2";
const CLAIM_INBOX: &str = "UPDATE slack_inbox SET next_attempt_at = $2, attempts = attempts + 1 \
     WHERE id = $1 AND status = 'pending' AND next_attempt_at = $3";
const FINISH_INBOX: &str = "UPDATE slack_inbox SET status = $3, outcome = $4, next_attempt_at = $5, updated_at = $6 \
     WHERE id = $1 AND status = 'pending' AND next_attempt_at = $2";
const PRUNE_INBOX: &str = "DELETE FROM slack_inbox WHERE status <> 'pending' AND updated_at < $1";
const RECENT_INBOX: &str =
    "SELECT kind, status, attempts, outcome, created_at, updated_at FROM slack_inbox ORDER BY id DESC LIMIT $1";

macro_rules! thread_sql {
    ($rest:literal) => {
        concat!(
            "SELECT id, ticket_id, channel, thread_ts, clanker, linked_by, linked_via, created_at, unlinked_at \
             FROM slack_threads ",
            $rest
        )
    };
}
const LIVE_THREAD: &str = thread_sql!("WHERE ticket_id = $1 AND unlinked_at IS NULL");
const THREAD_BY_TS: &str = thread_sql!("WHERE channel = $1 AND thread_ts = $2 AND unlinked_at IS NULL");
const THREAD_BY_ORIGIN: &str = thread_sql!("WHERE origin = $1");
const TICKET_THREADS: &str = thread_sql!("WHERE ticket_id = $1 ORDER BY id DESC LIMIT 50");
const UNLINK: &str = "UPDATE slack_threads SET unlinked_at = $2, unlinked_by = $3 \
     WHERE ticket_id = $1 AND unlinked_at IS NULL RETURNING id";
const DROP_PENDING: &str = "UPDATE slack_posts SET status = 'failed', \
     last_error = 'the thread was unlinked from the ticket before this was sent', updated_at = $2 \
     WHERE thread_id = $1 AND status = 'pending'";
const INSERT_THREAD: &str = "INSERT INTO slack_threads (id, ticket_id, channel, thread_ts, clanker, origin, linked_by, \
     linked_via, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

const UPSERT_POST: &str = "INSERT INTO slack_posts (id, key, thread_id, is_root, channel, method, body, version, \
     status, next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 'pending', $8, $8, $8) \
     ON CONFLICT (key) DO UPDATE SET body = excluded.body, version = slack_posts.version + 1, status = 'pending', \
     attempts = CASE WHEN slack_posts.status = 'failed' THEN 0 ELSE slack_posts.attempts END, \
     updated_at = excluded.updated_at WHERE slack_posts.body <> excluded.body";
const DUE_POSTS: &str = "SELECT p.id, p.key, p.thread_id, p.is_root, p.channel, p.method, p.body, p.version, p.ts, \
     p.attempts, p.next_attempt_at, t.thread_ts FROM slack_posts p LEFT JOIN slack_threads t ON t.id = p.thread_id \
     WHERE p.status = 'pending' AND p.next_attempt_at <= $1 \
     AND (p.thread_id IS NULL OR (t.unlinked_at IS NULL AND (p.is_root OR t.thread_ts IS NOT NULL))) \
     ORDER BY p.next_attempt_at, p.id LIMIT $2";
const CLAIM_POST: &str = "UPDATE slack_posts SET next_attempt_at = $2, attempts = attempts + 1 \
     WHERE id = $1 AND status = 'pending' AND next_attempt_at = $3";
const POST_SENT: &str = "UPDATE slack_posts SET sent_version = $3, ts = $4, edits = edits + $5, \
     status = CASE WHEN version = $3 THEN 'sent' ELSE 'pending' END, attempts = 0, last_error = NULL, \
     next_attempt_at = $6, updated_at = $6 WHERE id = $1 AND next_attempt_at = $2 RETURNING thread_id, is_root";
const ROOT_POSTED: &str = "UPDATE slack_threads SET thread_ts = $2 WHERE id = $1 AND thread_ts IS NULL";
const POST_RETRY: &str = "UPDATE slack_posts SET next_attempt_at = $3, last_error = $4, updated_at = $5 \
     WHERE id = $1 AND next_attempt_at = $2";
const POST_FAILED: &str = "UPDATE slack_posts SET status = 'failed', last_error = $3, next_attempt_at = $4, \
     updated_at = $4 WHERE id = $1 AND next_attempt_at = $2";
const POST_LOST: &str = "UPDATE slack_posts SET ts = NULL, last_error = $3, next_attempt_at = $4, updated_at = $4 \
     WHERE id = $1 AND next_attempt_at = $2";
const THREAD_POSTS: &str = "SELECT key, thread_id, channel, method, status, ts, edits, attempts, last_error, \
     updated_at FROM slack_posts WHERE thread_id = $1 ORDER BY id LIMIT 500";
const POST_BY_KEY: &str = "SELECT key, thread_id, channel, method, status, ts, edits, attempts, last_error, \
     updated_at FROM slack_posts WHERE key = $1";

/// A thread to bind.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSlackThread {
    pub ticket_id: TicketId,
    pub channel: String,
    /// `None` for a ticket filed from Slack: its root message, posted later, starts the thread.
    pub thread_ts: Option<String>,
    pub clanker: Option<String>,
    /// The inbox item that filed the ticket (one thread each).
    pub origin: Option<uuid::Uuid>,
    pub linked_by: Option<UserId>,
    pub linked_via: String,
}

/// A message to keep in Slack: posted once under `key`, edited when its body changes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSlackPost {
    pub key: String,
    pub thread_id: Option<SlackThreadId>,
    /// Its timestamp becomes the thread's.
    pub is_root: bool,
    pub channel: String,
    /// `message`, `file` or `ephemeral`.
    pub method: &'static str,
    pub body: serde_json::Value,
}

/// A message taken to be sent, under a lease (`lease` is the token its outcome is recorded with).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedPost {
    pub id: uuid::Uuid,
    pub key: String,
    pub thread_id: Option<SlackThreadId>,
    pub is_root: bool,
    pub channel: String,
    pub method: String,
    pub body: serde_json::Value,
    pub version: i64,
    /// Set once posted: the next send is an edit.
    pub ts: Option<String>,
    /// The thread's parent message, when it is in a thread.
    pub thread_ts: Option<String>,
    pub attempts: i64,
    pub lease: OffsetDateTime,
}

/// What became of a send.
#[derive(Debug, Clone, PartialEq)]
pub enum PostOutcome {
    /// Posted (or edited): its timestamp, and whether it was an edit.
    Sent {
        ts: String,
        edit: bool,
    },
    Retry {
        at: OffsetDateTime,
        error: String,
    },
    Failed {
        error: String,
    },
    /// The message to edit is gone: post it anew.
    Lost {
        error: String,
    },
}

/// Something Slack sent, still to act on.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxItem {
    pub id: uuid::Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Including this one.
    pub attempts: i64,
    pub lease: OffsetDateTime,
}

/// What Slack sent lately, for the Slack page.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct InboxSummary {
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    /// What came of it (the ticket filed, the approval, or why it was refused).
    pub outcome: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

fn settings_from_row(r: &impl RowExt) -> Result<SlackSettings, StoreError> {
    Ok(SlackSettings {
        signing_secret: r.text("signing_secret")?,
        bot_token_secret: r.text("bot_token_secret")?,
        api_url: r.text("api_url")?,
        team_id: r.opt_text("team_id")?,
        team_name: r.opt_text("team_name")?,
        bot_user_id: r.opt_text("bot_user_id")?,
        tested_at: r.opt_time("tested_at")?,
        test_error: r.opt_text("test_error")?,
        updated_at: r.time("updated_at")?,
    })
}

fn thread_from_row(r: &impl RowExt) -> Result<SlackThread, StoreError> {
    Ok(SlackThread {
        id: SlackThreadId::from_uuid(r.uuid("id")?),
        ticket_id: TicketId::from_uuid(r.uuid("ticket_id")?),
        channel: r.text("channel")?,
        thread_ts: r.opt_text("thread_ts")?,
        clanker: r.opt_text("clanker")?,
        linked_by: r.opt_uuid("linked_by")?.map(UserId::from_uuid),
        linked_via: r.text("linked_via")?,
        created_at: r.time("created_at")?,
        unlinked_at: r.opt_time("unlinked_at")?,
    })
}

fn post_from_row(r: &impl RowExt) -> Result<SlackPost, StoreError> {
    Ok(SlackPost {
        key: r.text("key")?,
        thread_id: r.opt_uuid("thread_id")?.map(SlackThreadId::from_uuid),
        channel: r.text("channel")?,
        method: r.text("method")?,
        status: parse_stored(POST, r.text("status")?)?,
        ts: r.opt_text("ts")?,
        edits: r.int("edits")?,
        attempts: r.int("attempts")?,
        last_error: r.opt_text("last_error")?,
        updated_at: r.time("updated_at")?,
    })
}

fn json_text(r: &impl RowExt, col: &str, entity: &'static str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(&r.text(col)?).map_err(|e| StoreError::Corrupt { entity, detail: format!("{col}: {e}") })
}

fn claimed_from_row(r: &impl RowExt) -> Result<ClaimedPost, StoreError> {
    Ok(ClaimedPost {
        id: r.uuid("id")?,
        key: r.text("key")?,
        thread_id: r.opt_uuid("thread_id")?.map(SlackThreadId::from_uuid),
        is_root: r.flag("is_root")?,
        channel: r.text("channel")?,
        method: r.text("method")?,
        body: json_text(r, "body", POST)?,
        version: r.int("version")?,
        ts: r.opt_text("ts")?,
        thread_ts: r.opt_text("thread_ts")?,
        attempts: r.int("attempts")?,
        lease: r.time("next_attempt_at")?,
    })
}

impl Store {
    /// Moves a row's `next_attempt_at` from `seen` to `until` (the lease's end, and its token); false when
    /// someone else moved it first.
    async fn take_lease(
        &self,
        sql: &'static str,
        id: uuid::Uuid,
        until: OffsetDateTime,
        seen: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(id)
                .bind(DbTime(until))
                .bind(DbTime(seen))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// The Slack app's settings, if an administrator saved them.
    pub async fn get_slack_settings(&self) -> Result<Option<SlackSettings>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(SELECT_SETTINGS).fetch_optional(pool).await?.map(|r| settings_from_row(&r)).transpose()
        })
    }

    /// Saves the settings; what Test connection learnt is forgotten until it runs again.
    pub async fn put_slack_settings(&self, new: &NewSlackSettings) -> Result<SlackSettings, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(PUT_SETTINGS)
                .bind(&new.signing_secret)
                .bind(&new.bot_token_secret)
                .bind(&new.api_url)
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        self.get_slack_settings().await?.ok_or_else(|| StoreError::not_found("Slack settings", "1"))
    }

    /// Removes the settings: Slack requests are refused until they are saved again.
    pub async fn delete_slack_settings(&self) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| sqlx::query(DELETE_SETTINGS).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Records Test connection: who the bot is, or why it failed.
    pub async fn record_slack_test(
        &self,
        outcome: Result<(&str, &str, &str), &str>,
    ) -> Result<Option<SlackSettings>, StoreError> {
        let now = DbTime(crate::now());
        on_pool!(self, |pool| match outcome {
            Ok((team, name, bot)) => {
                sqlx::query(RECORD_TEST_OK).bind(team).bind(name).bind(bot).bind(now).execute(pool).await.map(|_| ())
            }
            Err(error) => sqlx::query(RECORD_TEST_FAILED).bind(now).bind(error).execute(pool).await.map(|_| ()),
        })?;
        self.get_slack_settings().await
    }

    /// Remembers a request's signature; false when it was seen before (a replay).
    pub async fn see_slack_signature(&self, signature: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(SEE_SIGNATURE)
                .bind(signature)
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Forgets signatures seen before `before` (older requests are refused for their timestamp anyway).
    pub async fn prune_slack_signatures(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(PRUNE_SIGNATURES).bind(DbTime(before)).execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(Into::into)
    }

    /// Keeps something Slack sent, to act on after the answer; false when the same `dedupe` key was kept before.
    pub async fn enqueue_slack(
        &self,
        dedupe: &str,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(ENQUEUE)
                .bind(uuid::Uuid::now_v7())
                .bind(dedupe)
                .bind(kind)
                .bind(payload.to_string())
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Takes up to `limit` due inbox items for `lease`.
    pub async fn claim_slack_inbox(&self, limit: i64, lease: time::Duration) -> Result<Vec<InboxItem>, StoreError> {
        let now = crate::now();
        let due = on_pool!(self, |pool| {
            let rows = sqlx::query(DUE_INBOX).bind(DbTime(now)).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok::<_, StoreError>(InboxItem {
                        id: r.uuid("id")?,
                        kind: r.text("kind")?,
                        payload: json_text(r, "payload", "Slack request")?,
                        attempts: r.int("attempts")?,
                        lease: r.time("next_attempt_at")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut claimed = Vec::new();
        for (i, mut item) in due.into_iter().enumerate() {
            // Distinct lease ends, so each is its own token.
            let until = now + lease + time::Duration::microseconds(i as i64);
            if self.take_lease(CLAIM_INBOX, item.id, until, item.lease).await? {
                item.lease = until;
                item.attempts += 1;
                claimed.push(item);
            }
        }
        Ok(claimed)
    }

    /// Records what came of an inbox item: done, failed (with why), or pending again at `retry_at`.
    pub async fn finish_slack_inbox(
        &self,
        item: &InboxItem,
        done: bool,
        outcome: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        let now = crate::now();
        let status = match (done, retry_at) {
            (true, _) => "done",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let n = on_pool!(self, |pool| {
            sqlx::query(FINISH_INBOX)
                .bind(item.id)
                .bind(DbTime(item.lease))
                .bind(status)
                .bind(outcome)
                .bind(DbTime(retry_at.unwrap_or(now)))
                .bind(DbTime(now))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Forgets handled requests last touched before `before` (the pending ones stay).
    pub async fn prune_slack_inbox(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(PRUNE_INBOX).bind(DbTime(before)).execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(Into::into)
    }

    /// The latest things Slack sent, newest first.
    pub async fn recent_slack_inbox(&self, limit: i64) -> Result<Vec<InboxSummary>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(RECENT_INBOX).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok::<_, StoreError>(InboxSummary {
                        kind: r.text("kind")?,
                        status: r.text("status")?,
                        attempts: r.int("attempts")?,
                        outcome: r.opt_text("outcome")?,
                        created_at: r.time("created_at")?,
                        updated_at: r.time("updated_at")?,
                    })
                })
                .collect()
        })
    }

    /// Binds a thread to a ticket, unlinking the one it had (whose unsent messages are dropped), with its first
    /// message when there is one; all in one transaction. A thread already bound to another ticket is a
    /// `Conflict` on `thread`.
    pub async fn bind_slack_thread(
        &self,
        new: &NewSlackThread,
        root: Option<serde_json::Value>,
    ) -> Result<SlackThread, StoreError> {
        let id = SlackThreadId::new();
        let now = DbTime(crate::now());
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let old = sqlx::query(UNLINK)
                .bind(new.ticket_id.as_uuid())
                .bind(now)
                .bind(new.linked_by.map(|u| u.as_uuid()))
                .fetch_all(&mut *tx)
                .await?;
            for row in &old {
                sqlx::query(DROP_PENDING).bind(row.uuid("id")?).bind(now).execute(&mut *tx).await?;
            }
            sqlx::query(INSERT_THREAD)
                .bind(id.as_uuid())
                .bind(new.ticket_id.as_uuid())
                .bind(&new.channel)
                .bind(new.thread_ts.as_deref())
                .bind(new.clanker.as_deref())
                .bind(new.origin)
                .bind(new.linked_by.map(|u| u.as_uuid()))
                .bind(&new.linked_via)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from_write(THREAD, "slack_threads", e) {
                    StoreError::Conflict { entity, field } if field != "origin" && field != "ticket" => {
                        StoreError::Conflict { entity, field: "thread".into() }
                    }
                    other => other,
                })?;
            if let Some(body) = root {
                sqlx::query(UPSERT_POST)
                    .bind(uuid::Uuid::now_v7())
                    .bind(format!("{id}:root"))
                    .bind(id.as_uuid())
                    .bind(true)
                    .bind(&new.channel)
                    .bind("message")
                    .bind(body.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await)?;
        self.slack_thread_where(LIVE_THREAD, new.ticket_id.as_uuid())
            .await?
            .ok_or_else(|| StoreError::not_found(THREAD, id))
    }

    /// Unlinks the ticket's thread (its unsent messages are dropped); the thread unlinked, if there was one.
    pub async fn unlink_slack_thread(
        &self,
        ticket: TicketId,
        by: Option<UserId>,
    ) -> Result<Option<SlackThread>, StoreError> {
        let Some(live) = self.live_slack_thread(ticket).await? else { return Ok(None) };
        let now = DbTime(crate::now());
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let old = sqlx::query(UNLINK)
                .bind(ticket.as_uuid())
                .bind(now)
                .bind(by.map(|u| u.as_uuid()))
                .fetch_all(&mut *tx)
                .await?;
            for row in &old {
                sqlx::query(DROP_PENDING).bind(row.uuid("id")?).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await)?;
        Ok(Some(SlackThread { unlinked_at: Some(now.0), ..live }))
    }

    async fn slack_thread_where(&self, sql: &'static str, id: uuid::Uuid) -> Result<Option<SlackThread>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(sql).bind(id).fetch_optional(pool).await?.map(|r| thread_from_row(&r)).transpose()
        })
    }

    /// The ticket's live thread.
    pub async fn live_slack_thread(&self, ticket: TicketId) -> Result<Option<SlackThread>, StoreError> {
        self.slack_thread_where(LIVE_THREAD, ticket.as_uuid()).await
    }

    /// The thread an inbox item bound (a ticket filed from Slack), if it got that far.
    pub async fn slack_thread_by_origin(&self, origin: uuid::Uuid) -> Result<Option<SlackThread>, StoreError> {
        self.slack_thread_where(THREAD_BY_ORIGIN, origin).await
    }

    /// The live binding of a Slack thread.
    pub async fn slack_thread_at(&self, channel: &str, thread_ts: &str) -> Result<Option<SlackThread>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(THREAD_BY_TS)
                .bind(channel)
                .bind(thread_ts)
                .fetch_optional(pool)
                .await?
                .map(|r| thread_from_row(&r))
                .transpose()
        })
    }

    /// Every thread the ticket has had, newest first.
    pub async fn slack_threads_of(&self, ticket: TicketId) -> Result<Vec<SlackThread>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(TICKET_THREADS).bind(ticket.as_uuid()).fetch_all(pool).await?;
            rows.iter().map(thread_from_row).collect()
        })
    }

    /// Keeps a message: new, or its body changed (a new version to send). False when nothing changed.
    pub async fn upsert_slack_post(&self, post: &NewSlackPost) -> Result<bool, StoreError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(UPSERT_POST)
                .bind(uuid::Uuid::now_v7())
                .bind(&post.key)
                .bind(post.thread_id.map(|t| t.as_uuid()))
                .bind(post.is_root)
                .bind(&post.channel)
                .bind(post.method)
                .bind(post.body.to_string())
                .bind(DbTime(crate::now()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Takes up to `limit` messages with something to send for `lease`. A message in a thread waits until the
    /// thread's first message is posted; an unlinked thread's messages are not sent.
    pub async fn claim_slack_posts(&self, limit: i64, lease: time::Duration) -> Result<Vec<ClaimedPost>, StoreError> {
        let now = crate::now();
        let due = on_pool!(self, |pool| {
            let rows = sqlx::query(DUE_POSTS).bind(DbTime(now)).bind(limit).fetch_all(pool).await?;
            rows.iter().map(claimed_from_row).collect::<Result<Vec<_>, StoreError>>()
        })?;
        let mut claimed = Vec::new();
        for (i, mut post) in due.into_iter().enumerate() {
            let until = now + lease + time::Duration::microseconds(i as i64);
            if self.take_lease(CLAIM_POST, post.id, until, post.lease).await? {
                post.lease = until;
                post.attempts += 1;
                claimed.push(post);
            }
        }
        Ok(claimed)
    }

    /// Records a send by the holder of its lease; false when the lease was lost (someone else has it now).
    pub async fn record_slack_post(&self, post: &ClaimedPost, outcome: &PostOutcome) -> Result<bool, StoreError> {
        let now = DbTime(crate::now());
        let lease = DbTime(post.lease);
        on_pool!(self, |pool| async {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            let moved = match outcome {
                PostOutcome::Sent { ts, edit } => {
                    let row = sqlx::query(POST_SENT)
                        .bind(post.id)
                        .bind(lease)
                        .bind(post.version)
                        .bind(ts)
                        .bind(i64::from(*edit))
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(row) = &row
                        && row.flag("is_root")?
                        && let Some(thread) = row.opt_uuid("thread_id")?
                    {
                        sqlx::query(ROOT_POSTED).bind(thread).bind(ts).execute(&mut *tx).await?;
                    }
                    row.is_some()
                }
                PostOutcome::Retry { at, error } => {
                    let n = sqlx::query(POST_RETRY)
                        .bind(post.id)
                        .bind(lease)
                        .bind(DbTime(*at))
                        .bind(error)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    n.rows_affected() == 1
                }
                PostOutcome::Failed { error } | PostOutcome::Lost { error } => {
                    let sql = if matches!(outcome, PostOutcome::Failed { .. }) { POST_FAILED } else { POST_LOST };
                    let n = sqlx::query(sql).bind(post.id).bind(lease).bind(error).bind(now).execute(&mut *tx).await?;
                    n.rows_affected() == 1
                }
            };
            tx.commit().await?;
            Ok::<_, StoreError>(moved)
        }
        .await)
    }

    /// A thread's messages, oldest first.
    pub async fn slack_posts_of(&self, thread: SlackThreadId) -> Result<Vec<SlackPost>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(THREAD_POSTS).bind(thread.as_uuid()).fetch_all(pool).await?;
            rows.iter().map(post_from_row).collect()
        })
    }

    /// One message by its key.
    pub async fn slack_post(&self, key: &str) -> Result<Option<SlackPost>, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(POST_BY_KEY).bind(key).fetch_optional(pool).await?.map(|r| post_from_row(&r)).transpose()
        })
    }
}
