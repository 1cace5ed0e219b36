//! Outbound webhooks on the wire: Standard Webhooks signing
//! (<https://www.standardwebhooks.com/>), the HTTP client that refuses
//! loopback, link-local and private destinations at connect time (the check
//! runs on the addresses DNS gave, the ones connected to, so a name that
//! re-resolves elsewhere cannot slip past), and one attempt with its outcome
//! classified (DNS, private address, refused, TLS, timeout, HTTP status).

use std::collections::BTreeMap;
use std::error::Error as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use viberglass_domain::AttemptError;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The most of an answer's body an attempt keeps.
pub const SNIPPET_BYTES: usize = 1024;

/// A new Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes.
pub fn generate_secret(random: [u8; 32]) -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(random))
}

/// One `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` signature, keyed by the secret's decoded bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(key).unwrap_or_else(|_| key.as_bytes().to_vec());
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per secret, space-separated (during a rotation's overlap the
/// receiver may still hold the old secret).
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| sign(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// What an address is, when it is not a public one.
pub fn private_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address (cloud metadata lives here)",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 88, 99) => "a 6to4 relay address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        _ if ip.is_multicast() => "a multicast address",
        _ if a >= 240 => "a reserved address",
        _ => return None,
    })
}

fn private_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let s = ip.segments();
    Some(match s {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        [0, 0, 0, 0, 0, 0, _, _] => "an IPv4-compatible address",
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            return private_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
        }
        // IPv4-translated (::ffff:0:a.b.c.d), local-use NAT64 (64:ff9b:1::/48) and Teredo (2001::/32) can all
        // reach IPv4 addresses the check cannot see.
        [0, 0, 0, 0, 0xffff, 0, _, _] => "an IPv4-translated address",
        [0x64, 0xff9b, 1, ..] => "a local-use NAT64 address",
        [0x2001, 0, ..] => "a Teredo address",
        [0x2002, hi, lo, ..] => {
            return private_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
        }
        [x, ..] if x & 0xfe00 == 0xfc00 => "a unique local (private) address",
        [x, ..] if x & 0xffc0 == 0xfe80 => "a link-local address",
        [x, ..] if x & 0xffc0 == 0xfec0 => "a site-local address",
        [x, ..] if x & 0xff00 == 0xff00 => "a multicast address",
        [0x2001, 0x0db8, ..] => "a documentation address",
        _ => return None,
    })
}

/// The words that say what to do about a private destination.
pub const ALLOW_PRIVATE_HINT: &str = "outbound webhooks to loopback, link-local and private addresses are refused: an \
     administrator can allow internal targets for this subscription (allow_private) or for the whole server \
     (VIBERGLASS_WEBHOOK_ALLOW_PRIVATE=true)";

/// A destination refused for its address (the message names the kind of address, not the address: a
/// subscriber must not learn the server's internal names and addresses from it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} resolves to {kind}; {ALLOW_PRIVATE_HINT}")]
pub struct PrivateDestination {
    pub host: String,
    pub ip: IpAddr,
    pub kind: &'static str,
}

/// A host name that did not resolve.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the host {host} did not resolve ({detail}): check the subscription's URL")]
pub struct Unresolved {
    pub host: String,
    pub detail: String,
}

/// Resolves names with the system resolver and keeps only public addresses (unless private ones are allowed).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let looked_up = tokio::net::lookup_host((host.as_str(), 0)).await.map(|a| a.collect::<Vec<_>>());
            let found: Vec<SocketAddr> = match looked_up {
                Ok(addrs) => addrs,
                Err(e) => return Err(Box::new(Unresolved { host, detail: e.to_string() }) as _),
            };
            if found.is_empty() {
                return Err(Box::new(Unresolved { host, detail: "no addresses".into() }) as _);
            }
            let usable: Vec<SocketAddr> =
                found.iter().copied().filter(|a| allow || private_kind(a.ip()).is_none()).collect();
            if usable.is_empty() {
                let ip = found[0].ip();
                let kind = private_kind(ip).unwrap_or("a private address");
                return Err(Box::new(PrivateDestination { host, ip, kind }) as _);
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client outbound deliveries use: the guarded resolver, no proxies from the environment (they would connect
/// for us, past the check), no redirects (a redirect could point anywhere), `timeout` per attempt.
pub fn client(allow_private: bool, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(8)
        .user_agent(concat!("Viberglass-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with these settings builds")
}

/// How the destination is authenticated besides the signature (its `Debug` shows no value).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Bearer(_) => "Bearer(…)",
            Auth::Basic { .. } => "Basic(…)",
        })
    }
}

/// One attempt's request.
#[derive(Clone)]
pub struct Outgoing<'a> {
    pub url: &'a str,
    /// `webhook-id`: the event's id, the same on every attempt.
    pub id: &'a str,
    /// `webhook-timestamp`: this attempt's time, in Unix seconds.
    pub timestamp: i64,
    pub body: &'a str,
    /// The signing secrets (the current one first).
    pub secrets: Vec<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
    pub auth: Auth,
    pub allow_private: bool,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Option<u16>,
    /// The start of the answer's body.
    pub response: Option<String>,
    pub error: Option<(AttemptError, String)>,
    pub duration: Duration,
}

impl Outcome {
    /// The receiver said it wants no more (410 Gone).
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default()
}

/// The destination's address when its URL names one literally (no resolver runs for those).
fn literal_ip(url: &str) -> Option<IpAddr> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Refuses a URL whose host is a private address literal (hosts with names are judged when they resolve).
pub fn check_literal(url: &str, allow_private: bool) -> Result<(), PrivateDestination> {
    match literal_ip(url) {
        Some(ip) if !allow_private => match private_kind(ip) {
            Some(kind) => Err(PrivateDestination { host: host_of(url), ip, kind }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Classifies a transport error in words a subscriber can act on.
pub fn classify(error: &reqwest::Error, url: &str, timeout: Duration) -> (AttemptError, String) {
    let host = host_of(url);
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(p) = e.downcast_ref::<PrivateDestination>() {
            return (AttemptError::PrivateAddress, p.to_string());
        }
        if let Some(u) = e.downcast_ref::<Unresolved>() {
            return (AttemptError::Dns, u.to_string());
        }
        chain.push(e.to_string());
        source = e.source();
    }
    let detail = chain.join(": ");
    let lower = detail.to_lowercase();
    if error.is_timeout() {
        return (
            AttemptError::Timeout,
            format!(
                "{host} did not answer within {} s: a receiver must answer quickly (do the work after answering)",
                timeout.as_secs_f32()
            ),
        );
    }
    // rustls's errors, as its messages word them (the crate's types are not this crate's to downcast to).
    const TLS_WORDS: &[&str] =
        &["certificate", "tls", "handshake", "rustls", "corrupt message", "alert", "peer sent", "unknownissuer"];
    if TLS_WORDS.iter().any(|w| lower.contains(w)) {
        return (AttemptError::Tls, format!("the TLS connection to {host} failed ({detail}): check its certificate"));
    }
    if error.is_connect() || lower.contains("refused") || lower.contains("reset") {
        return (
            AttemptError::Refused,
            format!("could not connect to {host} ({detail}): is the receiver running and reachable from the server?"),
        );
    }
    (
        AttemptError::Other,
        format!("the request to {host} failed: {}", if detail.is_empty() { error.to_string() } else { detail }),
    )
}

/// Makes one attempt. Never panics; every failure is in the outcome.
pub async fn deliver(client: &reqwest::Client, out: &Outgoing<'_>, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let fail = |kind, message: String| Outcome {
        status: None,
        response: None,
        error: Some((kind, message)),
        duration: started.elapsed(),
    };
    if let Err(p) = check_literal(out.url, out.allow_private) {
        return fail(AttemptError::PrivateAddress, p.to_string());
    }
    let mut request = client
        .post(out.url)
        .header("content-type", "application/json")
        .header("webhook-id", out.id)
        .header("webhook-timestamp", out.timestamp.to_string())
        .header("webhook-signature", signature_header(&out.secrets, out.id, out.timestamp, out.body.as_bytes()));
    for (name, value) in out.headers {
        request = request.header(name, value);
    }
    request = match &out.auth {
        Auth::None => request,
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
    };
    let mut response = match request.body(out.body.to_owned()).send().await {
        Ok(r) => r,
        Err(e) => {
            let (kind, message) = classify(&e, out.url, timeout);
            return fail(kind, message);
        }
    };
    let status = response.status();
    let mut snippet = Vec::new();
    while snippet.len() < SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => snippet.extend_from_slice(&chunk[..chunk.len().min(SNIPPET_BYTES - snippet.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    let response_text = (!snippet.is_empty()).then(|| String::from_utf8_lossy(&snippet).into_owned());
    let error = if status.is_success() {
        None
    } else if status.as_u16() == 410 {
        Some((
            AttemptError::Status,
            "the receiver answered 410 Gone: it wants no more events, so the subscription was turned off (turn it on \
             again when the receiver wants events)"
                .to_owned(),
        ))
    } else if status.is_redirection() {
        Some((
            AttemptError::Status,
            format!(
                "the receiver answered {status} (redirects are not followed): set the subscription's URL to where it \
                 points"
            ),
        ))
    } else {
        Some((AttemptError::Status, format!("the receiver answered {status}: retrying with backoff")))
    };
    Outcome { status: Some(status.as_u16()), response: response_text, error, duration: started.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The specification's own example (standard-webhooks/spec, "Verifying the signature").
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = signature_header(&[secret, "whsec_c2Vjb25kLXNlY3JldC1zZWNvbmQtc2VjcmV0"], "m", 1, b"{}");
        assert_eq!(two.split(' ').count(), 2);
        assert!(generate_secret([7; 32]).starts_with("whsec_"));
        assert!(viberglass_domain::subscription::parse_signing_secret(&generate_secret(rand_bytes())).is_ok());
    }

    fn rand_bytes() -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i * 37 % 251) as u8;
        }
        b
    }

    #[test]
    fn private_ranges_are_known_and_public_ones_pass() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "ff02::1",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2001:0:4136:e378::1",
            "192.88.99.1",
        ] {
            assert!(private_kind(ip.parse().unwrap()).is_some(), "{ip} should be refused");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(private_kind(ip.parse().unwrap()).is_none(), "{ip} is public");
        }
    }

    #[test]
    fn literal_private_destinations_are_refused_with_the_setting_named() {
        let err = check_literal("http://127.0.0.1:9/x", false).unwrap_err().to_string();
        assert!(err.contains("loopback") && err.contains("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE"), "{err}");
        assert!(check_literal("http://[::1]:9/", false).is_err());
        assert!(check_literal("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_literal("https://hooks.example.com/", false).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_connect_time() {
        let client = client(false, Duration::from_secs(2));
        let headers = BTreeMap::new();
        let out = Outgoing {
            url: "http://localhost:9/hook",
            id: "evt",
            timestamp: 1,
            body: "{}",
            secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            headers: &headers,
            auth: Auth::None,
            allow_private: false,
        };
        let outcome = deliver(&client, &out, Duration::from_secs(2)).await;
        let (kind, message) = outcome.error.unwrap();
        assert_eq!(kind, AttemptError::PrivateAddress, "{message}");
        assert!(
            message.contains("localhost resolves to a loopback address") && message.contains("allow_private"),
            "{message}"
        );
        assert!(!message.contains("127.0.0.1"), "the address itself is not told: {message}");
        // Allowed, the same name connects (and nothing listens on port 9).
        let open = super::client(true, Duration::from_secs(2));
        let outcome = deliver(&open, &Outgoing { allow_private: true, ..out }, Duration::from_secs(2)).await;
        assert_eq!(outcome.error.unwrap().0, AttemptError::Refused);
    }

    fn outgoing<'a>(url: &'a str, headers: &'a BTreeMap<String, String>) -> Outgoing<'a> {
        Outgoing {
            url,
            id: "evt",
            timestamp: 1,
            body: "{}",
            secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            headers,
            auth: Auth::None,
            allow_private: true,
        }
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let timeout = Duration::from_millis(300);
        let headers = BTreeMap::new();
        let outcome = deliver(&client(true, timeout), &outgoing(&url, &headers), timeout).await;
        let (kind, message) = outcome.error.unwrap();
        assert_eq!(kind, AttemptError::Timeout, "{message}");
        assert!(message.contains("did not answer within 0.3 s"), "{message}");
        hold.abort();
    }

    #[tokio::test]
    async fn unknown_names_and_tls_to_a_plain_port_are_named() {
        let headers = BTreeMap::new();
        let timeout = Duration::from_secs(5);
        let outcome =
            deliver(&client(false, timeout), &outgoing("http://nowhere.invalid/hook", &headers), timeout).await;
        let (kind, message) = outcome.error.unwrap();
        assert_eq!(kind, AttemptError::Dns, "{message}");
        assert!(message.contains("nowhere.invalid did not resolve"), "{message}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook", listener.local_addr().unwrap());
        let plain = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let outcome = deliver(&client(true, timeout), &outgoing(&url, &headers), timeout).await;
        let (kind, message) = outcome.error.unwrap();
        assert_eq!(kind, AttemptError::Tls, "{message}");
        plain.abort();
    }

    #[tokio::test]
    async fn an_answer_is_kept_to_its_first_kibibyte_and_redirects_are_not_followed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                n += 1;
                let answer = if n == 1 {
                    let body = "x".repeat(100_000);
                    format!("HTTP/1.1 500 Oops\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n".to_owned()
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let timeout = Duration::from_secs(5);
        let headers = BTreeMap::new();
        let http = client(true, timeout);
        let first = deliver(&http, &outgoing(&url, &headers), timeout).await;
        assert_eq!(first.status, Some(500));
        assert_eq!(first.response.as_deref().map(str::len), Some(SNIPPET_BYTES));
        assert_eq!(first.error.unwrap().0, AttemptError::Status);
        let second = deliver(&http, &outgoing(&url, &headers), timeout).await;
        assert_eq!(second.status, Some(302));
        assert!(second.error.unwrap().1.contains("redirects are not followed"));
        server.abort();
    }
}
