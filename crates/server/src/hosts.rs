//! Which host names the server answers to. A web page on another site can
//! make a browser send requests to `127.0.0.1` under its own name (DNS
//! rebinding); such requests carry that name in `Host`, and are refused here,
//! before routing. IP literals and `localhost` are always fine: a rebinding
//! page never gets to use them.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The host names besides IP literals and `localhost` that requests may name.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    pub fn new(public_url: Option<&str>, extra: &[String]) -> Self {
        let mut names: Vec<String> = extra.iter().map(|h| h.to_ascii_lowercase()).collect();
        if let Some(host) =
            public_url.and_then(|u| url::Url::parse(u).ok()).and_then(|u| u.host_str().map(str::to_owned))
        {
            names.push(host.to_ascii_lowercase());
        }
        Self { names }
    }

    /// Whether a request addressed to `host` (a Host header: name, optional port) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            // [::1]:8888
            Some(rest) => return rest.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            None => host.rsplit_once(':').map_or(host.as_str(), |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) { name } else { host.as_str() }
            }),
        };
        let name = name.trim_end_matches('.');
        name == "localhost" || name.parse::<std::net::IpAddr>().is_ok() || self.names.iter().any(|n| n == name)
    }
}

/// Refuses requests addressed to a host name this server does not answer to.
pub async fn guard(State(allowed): State<std::sync::Arc<AllowedHosts>>, request: Request, next: Next) -> Response {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned));
    match host {
        Some(host) if !allowed.allows(&host) => {
            tracing::warn!(host, "refused a request addressed to a host this server does not answer to");
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "this server does not answer to `{host}`: set VIBERGLASS_PUBLIC_URL to the address people use, or \
                     add the name to VIBERGLASS_ALLOWED_HOSTS"
                ),
            )
            .into_response()
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_localhost_and_configured_names_are_answered_and_other_names_refused() {
        let allowed = AllowedHosts::new(Some("https://viberglass.example.com"), &["ci.internal".into()]);
        for ok in [
            "127.0.0.1:8888",
            "localhost:8888",
            "LOCALHOST",
            "[::1]:8888",
            "10.0.0.7",
            "viberglass.example.com",
            "viberglass.example.com.:443",
            "ci.internal:8888",
        ] {
            assert!(allowed.allows(ok), "{ok}");
        }
        for refused in
            ["evil.example", "evil.example:8888", "viberglass.example.com.evil.example", "127.0.0.1.nip.io", "[evil]"]
        {
            assert!(!allowed.allows(refused), "{refused}");
        }
    }
}
