//! Slack: the installation's Slack app (its signing secret and bot token are
//! secrets, named here), the threads bound to tickets, the messages the
//! server keeps in those threads, and the rules for what a reply means.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::secret::parse_secret_name;
use crate::validation::ValidationErrors;
use crate::{SlackThreadId, TicketId, UserId};

/// Slack's Web API, unless an administrator points elsewhere (Enterprise Grid proxies, tests).
pub const DEFAULT_API_URL: &str = "https://slack.com/api";

/// The installation's Slack app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlackSettings {
    /// The secret holding the app's signing secret (Basic Information → App Credentials).
    pub signing_secret: String,
    /// The secret holding the bot token (`xoxb-…`, OAuth & Permissions).
    pub bot_token_secret: String,
    /// The Web API root, `https://slack.com/api` unless changed.
    pub api_url: String,
    /// Learnt from Test connection (`auth.test`).
    pub team_id: Option<String>,
    pub team_name: Option<String>,
    /// The bot's own user id: its messages are never read as replies, and a mention of it asks for a revision.
    pub bot_user_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub tested_at: Option<OffsetDateTime>,
    /// What the last Test connection said when it failed.
    pub test_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The Slack app's settings as an administrator sends them.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSettingsInput {
    /// The name of the secret holding the signing secret.
    pub signing_secret: Option<String>,
    /// The name of the secret holding the bot token.
    pub bot_token_secret: Option<String>,
    /// Defaults to `https://slack.com/api`.
    pub api_url: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSlackSettings {
    pub signing_secret: String,
    pub bot_token_secret: String,
    pub api_url: String,
}

impl NewSlackSettings {
    pub fn parse(input: SlackSettingsInput) -> Result<Self, ValidationErrors> {
        let mut e = ValidationErrors::new();
        let secret = |e: &mut ValidationErrors, field: &str, value: Option<String>| match value {
            None => {
                e.add(field, "is required: the name of a secret (create it under Secrets first)");
                None
            }
            Some(v) => e.check(field, parse_secret_name(v.trim())),
        };
        let signing_secret = secret(&mut e, "signing_secret", input.signing_secret);
        let bot_token_secret = secret(&mut e, "bot_token_secret", input.bot_token_secret);
        let api_url = match input.api_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            None => Some(DEFAULT_API_URL.to_owned()),
            Some(u) => e.check("api_url", parse_api_url(u)),
        };
        match (signing_secret, bot_token_secret, api_url) {
            (Some(signing_secret), Some(bot_token_secret), Some(api_url)) if e.is_empty() => {
                Ok(Self { signing_secret, bot_token_secret, api_url })
            }
            _ => Err(e),
        }
    }
}

fn parse_api_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("is not a URL ({e}): use https://slack.com/api"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err("must be an http(s) address such as https://slack.com/api".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must not carry a query, a fragment or credentials".into());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// A Slack thread bound to a ticket: the ticket's runs are mirrored into it and its replies act on the ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlackThread {
    pub id: SlackThreadId,
    pub ticket_id: TicketId,
    /// The channel id (`C…`).
    pub channel: String,
    /// The thread's parent message (`1700000000.123456`); empty until the ticket's first message is posted.
    pub thread_ts: Option<String>,
    /// The clanker that Approve & Continue and revisions from Slack run with (the one the ticket was filed with).
    pub clanker: Option<String>,
    /// Who bound it, and from where: `slack` (filed with /viberator) or `ui` / `api` (linked by hand).
    pub linked_by: Option<UserId>,
    pub linked_via: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Set when unlinked: the thread no longer mirrors the ticket.
    #[serde(with = "time::serde::rfc3339::option")]
    pub unlinked_at: Option<OffsetDateTime>,
}

named_enum!(
    /// Where a message the server keeps in Slack stands.
    SlackPostStatus, "Slack message status", {
        /// Waiting to be posted, or to have its newest content sent.
        Pending => "pending",
        Sent => "sent",
        /// Slack refused it; `last_error` says why and what to do.
        Failed => "failed",
    }
);

/// A message the server posts (and edits in place) in a bound thread, or an ephemeral answer to someone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlackPost {
    /// What it is about: `root`, `job:<id>`, `doc:<phase>:<revision>`, `pr:<url>`, …
    pub key: String,
    pub thread_id: Option<SlackThreadId>,
    pub channel: String,
    /// `message`, `file` or `ephemeral`.
    pub method: String,
    pub status: SlackPostStatus,
    /// The message's own timestamp once posted.
    pub ts: Option<String>,
    /// Edits sent after the first post.
    pub edits: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A Slack thread as a person names it: a message link (`https://acme.slack.com/archives/C0123/p1700000000123456`,
/// a reply's link carries its thread in `thread_ts`), or `C0123/1700000000.123456`.
pub fn parse_thread(value: &str) -> Result<(String, String), String> {
    const HELP: &str = "name the thread by its link (Copy link on the thread's first message, e.g. \
         https://acme.slack.com/archives/C0123ABCD/p1700000000123456) or as CHANNEL/TIMESTAMP \
         (C0123ABCD/1700000000.123456)";
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("is empty: {HELP}"));
    }
    let (channel, ts) = if value.starts_with("https://") || value.starts_with("http://") {
        let url = url::Url::parse(value).map_err(|_| format!("is not a link: {HELP}"))?;
        let segments: Vec<&str> =
            url.path_segments().map(|s| s.filter(|p| !p.is_empty()).collect()).unwrap_or_default();
        let (Some(&"archives"), Some(channel), Some(message)) = (segments.first(), segments.get(1), segments.get(2))
        else {
            return Err(format!("is not a Slack message link: {HELP}"));
        };
        let thread = url.query_pairs().find(|(k, _)| k == "thread_ts").map(|(_, v)| v.into_owned());
        let ts = match thread {
            Some(t) => t,
            None => {
                let digits = message.strip_prefix('p').filter(|d| d.len() > 6 && d.bytes().all(|b| b.is_ascii_digit()));
                let Some(digits) = digits else {
                    return Err(format!("does not end in a message (p1700000000123456): {HELP}"));
                };
                format!("{}.{}", &digits[..digits.len() - 6], &digits[digits.len() - 6..])
            }
        };
        ((*channel).to_owned(), ts)
    } else {
        let Some((channel, ts)) = value.split_once(['/', ' ']) else { return Err(format!("is not a thread: {HELP}")) };
        (channel.trim().to_owned(), ts.trim().to_owned())
    };
    if channel.is_empty()
        || channel.len() > 32
        || !channel.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        || !matches!(channel.as_bytes()[0], b'C' | b'G' | b'D')
    {
        return Err(format!(
            "`{}` is not a channel id (C…, G… or D…): {HELP}",
            channel.chars().take(40).collect::<String>()
        ));
    }
    if !valid_ts(&ts) {
        return Err(format!("`{}` is not a message timestamp: {HELP}", ts.chars().take(40).collect::<String>()));
    }
    Ok((channel, ts))
}

/// A Slack message timestamp: seconds, a dot, six digits.
pub fn valid_ts(ts: &str) -> bool {
    matches!(ts.split_once('.'), Some((s, us)) if (1..=12).contains(&s.len()) && us.len() == 6
        && s.bytes().all(|b| b.is_ascii_digit()) && us.bytes().all(|b| b.is_ascii_digit()))
}

/// Replies that approve the thread's current document and continue.
pub const APPROVAL_PHRASES: &[&str] = &["approve", "approved", "lgtm", "looks good", "looks good to me", "ship it"];

/// Whether a reply (the bot's mention removed) approves: the whole reply is one of [`APPROVAL_PHRASES`], in any
/// case, give or take punctuation and emoji around it. "don't approve" or "approve after the fix" do not.
pub fn is_approval(text: &str) -> bool {
    let words: String = strip_mentions(text)
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '\'' { c.to_ascii_lowercase() } else { ' ' })
        .collect();
    let words = words.split_whitespace().collect::<Vec<_>>().join(" ");
    APPROVAL_PHRASES.contains(&words.as_str())
}

/// The reply without `<@U…>` mentions and `:emoji:` codes, trimmed.
pub fn strip_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        out.push_str(&rest[..start]);
        match rest[start..].find('>') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    // `:name:` emoji codes (a letter among letters, digits, `_`, `-`, `+`) go; other colons stay.
    let mut cleaned = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(start) = rest.find(':') {
        let after = &rest[start + 1..];
        let end = after.find(':');
        let code = end.map(|e| &after[..e]).filter(|c| {
            !c.is_empty()
                && c.bytes().any(|b| b.is_ascii_alphabetic())
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
        });
        match (code, end) {
            (Some(_), Some(e)) => {
                cleaned.push_str(&rest[..start]);
                rest = &after[e + 1..];
            }
            _ => {
                cleaned.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    cleaned.push_str(rest);
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `text` mentions `user` (`<@U123>` or `<@U123|name>`).
pub fn mentions(text: &str, user: &str) -> bool {
    !user.is_empty() && (text.contains(&format!("<@{user}>")) || text.contains(&format!("<@{user}|")))
}

/// Slack's mrkdwn escapes: `&`, `<` and `>` (so text never becomes a mention, a link or a broadcast).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_link_names_its_channel_and_timestamp() {
        assert_eq!(
            parse_thread("https://acme.slack.com/archives/C0123ABCD/p1700000000123456").unwrap(),
            ("C0123ABCD".into(), "1700000000.123456".into())
        );
        let reply =
            "https://acme.slack.com/archives/C0123ABCD/p1700000099000001?thread_ts=1700000000.123456&cid=C0123ABCD";
        assert_eq!(parse_thread(reply).unwrap().1, "1700000000.123456", "a reply's link names its thread");
        assert_eq!(parse_thread(" C0123ABCD/1700000000.123456 ").unwrap().0, "C0123ABCD");
    }

    #[test]
    fn a_thread_that_is_not_one_says_how_to_name_it() {
        for bad in ["", "general", "https://acme.slack.com/team/U1", "c0123/1700000000.123456", "C0123/17000"] {
            let e = parse_thread(bad).unwrap_err();
            assert!(e.contains("Copy link"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_a_whole_reply_of_approval_approves() {
        for yes in ["lgtm", "LGTM!", "<@U0BOT> approve", "Looks good :tada:", "ship it 🚀", "approved."] {
            assert!(is_approval(yes), "{yes}");
        }
        for no in ["don't approve", "approve after the fix", "lgtm but rename it", "", "<@U0BOT>"] {
            assert!(!is_approval(no), "{no}");
        }
    }

    #[test]
    fn mentions_and_emoji_are_stripped_from_feedback() {
        assert_eq!(strip_mentions("<@U0BOT> please :pray: rename it"), "please rename it");
        assert_eq!(strip_mentions("at 10:30:00, see a:b"), "at 10:30:00, see a:b");
        assert!(mentions("hey <@U0BOT|viberglass> do it", "U0BOT"));
        assert!(!mentions("hey <@U0BOTX>", "U0BOT"));
    }

    #[test]
    fn settings_need_both_secrets_and_default_the_api() {
        let e = NewSlackSettings::parse(SlackSettingsInput::default()).unwrap_err();
        assert_eq!(e.fields.len(), 2, "{e:?}");
        let s = NewSlackSettings::parse(SlackSettingsInput {
            signing_secret: Some("SLACK_SIGNING".into()),
            bot_token_secret: Some("SLACK_BOT".into()),
            api_url: None,
        })
        .unwrap();
        assert_eq!(s.api_url, DEFAULT_API_URL);
        let bad = NewSlackSettings::parse(SlackSettingsInput {
            signing_secret: Some("SLACK_SIGNING".into()),
            bot_token_secret: Some("SLACK_BOT".into()),
            api_url: Some("ftp://x".into()),
        });
        assert!(bad.is_err());
    }
}
