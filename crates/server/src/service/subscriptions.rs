//! Outbound webhook subscriptions: create, change, rotate the secret (with an
//! overlap window in which both signatures are sent), send a test event,
//! redeliver; and what an attempt's outcome does to its delivery and its
//! subscription (410 Gone, or failing past the maximum age, turns it off with
//! a notice on its page and in the audit log).

use serde_json::json;
use time::OffsetDateTime;
use viberglass_domain::subscription::{NewSubscription, SubscriptionPatch, TEST_EVENT_TYPE};
use viberglass_domain::{
    OutboundAttempt, OutboundDelivery, OutboundDeliveryId, Subscription, SubscriptionCredentials, SubscriptionId,
    SubscriptionInput, SubscriptionScope,
};
use viberglass_integrations::outbound;
use viberglass_store::{AfterAttempt, ClaimedDelivery, NewOutbound, SealedValue, StoreError, StoredSubscription};

use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, audit};

/// A subscription as created or rotated: the secret is shown this once.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WithSecret {
    #[serde(flatten)]
    pub subscription: Subscription,
    /// The signing secret (`whsec_…`), shown only in this answer when the server generated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Writes an audit entry about a subscription (`None`: the server did it).
async fn audit_subscription(
    state: &AppState,
    caller: Option<&Caller>,
    action: &str,
    id: SubscriptionId,
    project: Option<viberglass_domain::ProjectId>,
    details: serde_json::Value,
) {
    audit(state, caller, action, "webhook_subscription", Some(id.to_string()), project, details).await;
}

fn sealed_name(id: SubscriptionId) -> String {
    format!("subscription:{id}")
}

fn seal(state: &AppState, id: SubscriptionId, creds: &SubscriptionCredentials) -> SealedValue {
    let text = serde_json::to_string(creds).unwrap_or_default();
    state.vault.seal(&sealed_name(id), &text)
}

/// Opens a subscription's credentials.
pub fn open(state: &AppState, stored: &StoredSubscription) -> Result<SubscriptionCredentials, String> {
    let sealed = viberglass_secrets::Sealed {
        ciphertext: stored.credentials.ciphertext.clone(),
        nonce: stored.credentials.nonce.clone(),
        key_id: stored.credentials.key_id.clone(),
    };
    let text = state.vault.keyring().open(&sealed_name(stored.subscription.id), &sealed).map_err(|e| {
        format!(
            "the subscription's credentials cannot be opened ({e}): the server's encryption key changed; rotate the \
             secret and set its headers and authentication again"
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("the subscription's credentials are unreadable ({e})"))
}

fn generate_secret() -> String {
    outbound::generate_secret(rand::random())
}

fn only_admin_allows_private(caller: &Caller, input: &SubscriptionInput) -> ServiceResult<()> {
    if input.allow_private.is_some() && !caller.is_admin() {
        return Err(ServiceError::forbidden(
            "admin_only",
            "only an administrator may allow a subscription to reach loopback, link-local and private addresses: ask \
             one to set allow_private",
        ));
    }
    Ok(())
}

/// Refuses a destination whose URL is a private address literal when private destinations are not allowed (a
/// name is judged again when it resolves, at every attempt).
fn check_destination(state: &AppState, sub: &Subscription) -> ServiceResult<()> {
    let allowed = sub.allow_private || state.config.webhook_allow_private;
    outbound::check_literal(&sub.url, allowed).map_err(|e| ServiceError::invalid("url", e.to_string()))
}

/// The most subscriptions a project has, and the instance-wide ones.
pub const MAX_PROJECT_SUBSCRIPTIONS: i64 = 50;
pub const MAX_INSTANCE_SUBSCRIPTIONS: i64 = 200;

pub async fn create(
    state: &AppState,
    caller: &Caller,
    scope: SubscriptionScope,
    input: SubscriptionInput,
) -> ServiceResult<WithSecret> {
    only_admin_allows_private(caller, &input)?;
    let new = NewSubscription::parse(scope, input, generate_secret(), viberglass_store::now())?;
    let (limit, whose) = match scope {
        SubscriptionScope::Instance => (MAX_INSTANCE_SUBSCRIPTIONS, "the instance"),
        SubscriptionScope::Project(_) => (MAX_PROJECT_SUBSCRIPTIONS, "a project"),
    };
    if state.store.count_subscriptions(scope.project_id()).await? >= limit {
        return Err(ServiceError::unprocessable(
            "too_many_subscriptions",
            format!(
                "{whose} may have at most {limit} subscriptions: change or reuse one (a subscription can take \
                 several event types)"
            ),
        ));
    }
    check_destination(state, &new.subscription)?;
    let sealed = seal(state, new.subscription.id, &new.credentials);
    let created = state.store.create_subscription(&new.subscription, &sealed).await?;
    audit_subscription(
        state,
        Some(caller),
        "webhook_subscription_created",
        created.id,
        created.project_id,
        json!({"url": created.url, "events": created.events}),
    )
    .await;
    let shown = (!new.secret_given).then(|| new.credentials.secret.clone());
    Ok(WithSecret { subscription: created, secret: shown })
}

/// The subscription `id`, as a parsed id or a not-found.
pub async fn find(state: &AppState, id: &str) -> ServiceResult<StoredSubscription> {
    let parsed: SubscriptionId =
        id.parse().map_err(|_| ServiceError::invalid("subscription_id", "is not a subscription id"))?;
    Ok(state.store.get_subscription(parsed).await?)
}

/// Reads, changes and stores a subscription, guarded by the `updated_at` it read, retried on contention.
async fn modify(
    state: &AppState,
    id: SubscriptionId,
    change: impl Fn(&mut Subscription, &mut SubscriptionCredentials) -> ServiceResult<()>,
) -> ServiceResult<Subscription> {
    for _ in 0..5 {
        let stored = state.store.get_subscription(id).await?;
        let mut creds = open(state, &stored).map_err(|m| ServiceError::unprocessable("credentials_unreadable", m))?;
        let mut sub = stored.subscription.clone();
        change(&mut sub, &mut creds)?;
        check_destination(state, &sub)?;
        let sealed = seal(state, id, &creds);
        if let Some(saved) = state.store.save_subscription(&sub, &sealed, stored.subscription.updated_at).await? {
            return Ok(saved);
        }
    }
    Err(StoreError::Contended { entity: "subscription" }.into())
}

/// Changes a subscription. A `secret` replaces the signing secret at once (use [`rotate_secret`] for an overlap).
pub async fn update(
    state: &AppState,
    caller: &Caller,
    id: SubscriptionId,
    input: SubscriptionInput,
) -> ServiceResult<Subscription> {
    only_admin_allows_private(caller, &input)?;
    let patch = SubscriptionPatch::parse(input)?;
    let now = viberglass_store::now();
    let admin = caller.is_admin();
    let saved = modify(state, id, |sub, creds| {
        // An administrator allowed internal targets for the URL they saw: anyone else moving it loses that.
        if !admin && patch.url.as_ref().is_some_and(|u| !viberglass_domain::subscription::same_origin(u, &sub.url)) {
            sub.allow_private = false;
        }
        patch.apply(sub, creds);
        if let Some(secret) = &patch.secret {
            creds.secret = secret.clone();
            creds.previous_secret = None;
            sub.previous_secret_until = None;
            sub.secret_rotated_at = now;
        }
        Ok(())
    })
    .await?;
    audit_subscription(
        state,
        Some(caller),
        "webhook_subscription_updated",
        id,
        saved.project_id,
        json!({"url": saved.url, "active": saved.active, "secret_changed": patch.secret.is_some()}),
    )
    .await;
    state.outbound_wake.notify_one();
    Ok(saved)
}

/// The longest overlap a rotation may keep the old secret signing.
pub const MAX_OVERLAP_SECS: u64 = 7 * 86_400;

/// Generates a new signing secret. For `overlap_secs` (default a day) deliveries carry a signature with the
/// old secret as well, so the receiver can switch without losing events.
pub async fn rotate_secret(
    state: &AppState,
    caller: &Caller,
    id: SubscriptionId,
    overlap_secs: Option<u64>,
) -> ServiceResult<WithSecret> {
    let overlap = overlap_secs.unwrap_or(86_400);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ServiceError::invalid(
            "overlap_secs",
            format!("must be at most {MAX_OVERLAP_SECS} (7 days); 0 stops the old secret at once"),
        ));
    }
    let secret = generate_secret();
    let now = viberglass_store::now();
    let saved = modify(state, id, |sub, creds| {
        creds.previous_secret = (overlap > 0).then(|| creds.secret.clone());
        sub.previous_secret_until = (overlap > 0).then(|| now + time::Duration::seconds(overlap as i64));
        creds.secret = secret.clone();
        sub.secret_rotated_at = now;
        Ok(())
    })
    .await?;
    audit_subscription(
        state,
        Some(caller),
        "webhook_subscription_secret_rotated",
        id,
        saved.project_id,
        json!({"overlap_secs": overlap}),
    )
    .await;
    Ok(WithSecret { subscription: saved, secret: Some(secret) })
}

/// Queues a `webhook.test` delivery, attempted like any other.
pub async fn send_test(
    state: &AppState,
    caller: &Caller,
    stored: &StoredSubscription,
) -> ServiceResult<OutboundDelivery> {
    let sub = &stored.subscription;
    if !sub.active {
        return Err(ServiceError::conflict(
            "subscription_inactive",
            "the subscription is turned off: turn it on (active: true) to send a test event",
        ));
    }
    if state.store.has_pending(sub.id, TEST_EVENT_TYPE).await? {
        return Err(ServiceError::conflict(
            "test_pending",
            "a test event is still pending (waiting or being retried): its attempts show on the subscription's page",
        ));
    }
    let event_id = uuid::Uuid::now_v7();
    let now = viberglass_store::now();
    let body = json!({
        "type": TEST_EVENT_TYPE,
        "timestamp": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "data": {"subscription_id": sub.id, "project_id": sub.project_id,
            "message": "A test event from Viberglass: your endpoint receives and verifies deliveries."},
    });
    let owed =
        NewOutbound { subscription_id: sub.id, event_id, event_type: TEST_EVENT_TYPE.into(), body: body.to_string() };
    state.store.enqueue_outbound(std::slice::from_ref(&owed)).await?;
    state.outbound_wake.notify_one();
    audit_subscription(
        state,
        Some(caller),
        "webhook_subscription_tested",
        sub.id,
        sub.project_id,
        json!({"event_id": event_id}),
    )
    .await;
    let page =
        state.store.list_outbound(sub.id, None, false, viberglass_domain::PageRequest { limit: 20, after: None });
    let found = page.await?.items.into_iter().find(|d| d.event_id == event_id);
    found.ok_or_else(|| ServiceError::NotFound("the test delivery just queued".into()))
}

/// The delivery `id` of the subscription (another subscription's is not found).
pub async fn find_delivery(state: &AppState, sub: SubscriptionId, id: &str) -> ServiceResult<OutboundDelivery> {
    let parsed: OutboundDeliveryId =
        id.parse().map_err(|_| ServiceError::invalid("delivery_id", "is not an outbound delivery id"))?;
    let delivery = state.store.get_outbound(parsed).await?;
    if delivery.subscription_id != sub {
        return Err(StoreError::NotFound { entity: "outbound delivery", id: id.to_owned() }.into());
    }
    Ok(delivery)
}

/// Makes one delivery due again now (same `webhook-id`: receivers that saw it dedupe).
pub async fn redeliver(
    state: &AppState,
    caller: &Caller,
    sub: &Subscription,
    delivery: OutboundDeliveryId,
) -> ServiceResult<OutboundDelivery> {
    if !state.store.redeliver_outbound(sub.id, delivery).await? {
        let body_gone = state.store.outbound_body(delivery).await?.is_empty();
        return Err(if body_gone {
            ServiceError::conflict(
                "delivery_body_pruned",
                format!(
                    "this delivery succeeded more than {} days ago and its body is no longer kept \
                     (VIBERGLASS_WEBHOOK_DELIVERY_DAYS): there is nothing to send again",
                    state.config.webhook_delivery_days
                ),
            )
        } else {
            ServiceError::conflict(
                "attempt_in_flight",
                "an attempt of this delivery is under way: wait for its outcome, then redeliver if it failed",
            )
        });
    }
    state.outbound_wake.notify_one();
    audit_subscription(
        state,
        Some(caller),
        "webhook_delivery_redelivered",
        sub.id,
        sub.project_id,
        json!({"delivery_id": delivery}),
    )
    .await;
    Ok(state.store.get_outbound(delivery).await?)
}

/// Makes every failed delivery since `since` due again. Returns how many.
pub async fn redeliver_failed(
    state: &AppState,
    caller: &Caller,
    sub: &Subscription,
    since: OffsetDateTime,
) -> ServiceResult<u64> {
    let n = state.store.redeliver_failed_outbound(sub.id, since).await?;
    state.outbound_wake.notify_one();
    audit_subscription(
        state,
        Some(caller),
        "webhook_deliveries_redelivered",
        sub.id,
        sub.project_id,
        json!({"since": since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(), "count": n}),
    )
    .await;
    Ok(n)
}

/// Records an attempt and applies what follows: the delivery's next step, and the subscription turned off when
/// the receiver said 410 Gone or it has been failing for longer than the maximum age.
pub async fn record_attempt(
    state: &AppState,
    delivery: &ClaimedDelivery,
    owner: &str,
    attempt: &OutboundAttempt,
    after: &AfterAttempt,
    project: Option<viberglass_domain::ProjectId>,
) -> Result<(), StoreError> {
    let (moved, failing) = state.store.record_outbound_attempt(delivery, owner, attempt, after).await?;
    if !moved {
        return Ok(());
    }
    let disabled = |reason: String| async move {
        tracing::warn!(subscription = %delivery.subscription_id, reason, "a webhook subscription was turned off");
        audit_subscription(
            state,
            None,
            "webhook_subscription_disabled",
            delivery.subscription_id,
            project,
            json!({"reason": reason}),
        )
        .await;
    };
    if let AfterAttempt::GiveUp { gone: Some(reason) } = after {
        disabled(reason.clone()).await;
        return Ok(());
    }
    let max_age = time::Duration::seconds(state.config.webhook_max_age_secs as i64);
    if let Some(since) = failing
        && viberglass_store::now() - since > max_age
    {
        let reason = format!(
            "every delivery has failed since {} (longer than the maximum age of {}): the last error was: {}; fix the \
             receiver, turn the subscription on again and redeliver the failed deliveries",
            since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            human_secs(state.config.webhook_max_age_secs),
            attempt.error.as_deref().unwrap_or("none recorded")
        );
        if state.store.disable_subscription(delivery.subscription_id, &reason).await? {
            disabled(reason).await;
        }
    }
    Ok(())
}

/// `259200` → `3 days`.
pub fn human_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}
