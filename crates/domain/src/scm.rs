//! Repository addresses, branch names and branch-name templates.

/// A git branch name that `git check-ref-format --branch` would accept.
pub fn parse_branch_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > 200 {
        return Err("must be at most 200 characters".into());
    }
    let bad = |why: &str| Err(format!("`{name}` is not a valid git branch name: {why}"));
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') || name.ends_with('.') {
        return bad("it must not start with `-` or `/` nor end with `/` or `.`");
    }
    if name.ends_with(".lock") {
        return bad("it must not end with `.lock`");
    }
    if name.contains("..") || name.contains("//") || name.contains("@{") || name == "@" {
        return bad("it must not contain `..`, `//` or `@{`");
    }
    if let Some(c) = name.chars().find(|c| {
        crate::ticket::is_invisible_or_separator(*c)
            || c.is_whitespace()
            || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad(&format!("it must not contain {c:?}"));
    }
    if name.split('/').any(|part| part.starts_with('.')) {
        return bad("no part of it may start with `.`");
    }
    // Each part is a file name in the repository's refs: at most 255 bytes.
    if name.split('/').any(|part| part.len() > 255) {
        return bad("a part between slashes is longer than 255 bytes");
    }
    Ok(name.to_owned())
}

/// A repository address git can clone: `https://`, `http://`, `ssh://`,
/// `git@host:path` or `file://`.
pub fn parse_repository_url(value: &str) -> Result<String, String> {
    let url = value.trim();
    if url.is_empty() {
        return Err("must not be empty: give the repository's clone URL, e.g. https://github.com/acme/app.git".into());
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a single clone URL without spaces".into());
    }
    let scheme_ok = ["https://", "http://", "ssh://", "file://"].iter().any(|s| url.starts_with(s));
    let scp_like = url.starts_with("git@") && url.contains(':');
    if !scheme_ok && !scp_like {
        return Err(format!(
            "`{url}` is not a clone URL: use https://host/owner/repo.git, ssh://host/owner/repo.git or git@host:owner/repo.git"
        ));
    }
    // A host git would read as an option (`ssh://-oProxyCommand=…`) runs a command.
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default().rsplit('@').next().unwrap_or_default())
        .unwrap_or_else(|| url.split(':').next().unwrap_or_default().rsplit('@').next().unwrap_or_default());
    let host = host.trim_start_matches('[');
    if host.starts_with('-') || url.contains("://-") || url.contains("://[-") || url.starts_with('-') {
        return Err(format!("`{url}` names a host starting with `-`, which git would read as an option: fix the host"));
    }
    if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(
                "must not carry credentials: remove the `user:token@` part and link an SCM credential instead".into()
            );
        }
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
    }
    Ok(url.to_owned())
}

/// The placeholders a branch-name template may use.
pub const BRANCH_TEMPLATE_PLACEHOLDERS: &[&str] = &["ticket", "clanker", "job", "date"];
pub const DEFAULT_BRANCH_TEMPLATE: &str = "viberglass/{{ ticket }}";

/// Checks a branch-name template: only known placeholders, and what it
/// renders to with sample values is a valid branch name.
pub fn parse_branch_template(value: &str) -> Result<String, String> {
    let template = value.trim();
    let mut sample = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        sample.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("has a `{{` without a closing `}}`".into());
        };
        let name = after[..end].trim();
        if !BRANCH_TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "uses the unknown placeholder `{{{{ {name} }}}}`: use {}",
                BRANCH_TEMPLATE_PLACEHOLDERS.iter().map(|p| format!("{{{{ {p} }}}}")).collect::<Vec<_>>().join(", ")
            ));
        }
        sample.push_str("x1");
        rest = &after[end + 2..];
    }
    sample.push_str(rest);
    parse_branch_name(&sample).map_err(|why| format!("does not render to a valid branch name: {why}"))?;
    Ok(template.to_owned())
}

named_enum!(
    /// Which API opens pull requests for a repository.
    ScmProvider, "SCM provider", {
        /// GitHub or GitHub Enterprise: pull requests.
        GitHub => "github",
        /// GitLab (gitlab.com or self-hosted): merge requests.
        GitLab => "gitlab",
        /// A plain git remote without an API: the branch is pushed and the
        /// change is recorded in Viberglass.
        Git => "git",
    }
);

impl ScmProvider {
    /// The provider a host implies when no integration says otherwise.
    pub fn for_host(host: &str) -> ScmProvider {
        let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        match host.as_str() {
            "github.com" | "www.github.com" => ScmProvider::GitHub,
            "gitlab.com" | "www.gitlab.com" => ScmProvider::GitLab,
            _ => ScmProvider::Git,
        }
    }

    /// The usual instance address: `https://github.com`, `https://gitlab.com`.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ScmProvider::GitHub => Some("https://github.com"),
            ScmProvider::GitLab => Some("https://gitlab.com"),
            ScmProvider::Git => None,
        }
    }

    /// The REST API root for an instance address: github.com's is
    /// `https://api.github.com`, GitHub Enterprise's `<base>/api/v3`,
    /// GitLab's `<base>/api/v4`.
    pub fn api_url(self, base_url: &str) -> Option<String> {
        let base = base_url.trim_end_matches('/');
        match self {
            ScmProvider::GitHub => {
                let host = base.split("://").nth(1).unwrap_or(base);
                Some(if host == "github.com" || host == "www.github.com" {
                    "https://api.github.com".to_owned()
                } else {
                    format!("{base}/api/v3")
                })
            }
            ScmProvider::GitLab => Some(format!("{base}/api/v4")),
            ScmProvider::Git => None,
        }
    }

    /// What the provider calls a pull request.
    pub fn pull_request_noun(self) -> &'static str {
        match self {
            ScmProvider::GitLab => "merge request",
            _ => "pull request",
        }
    }
}

/// An instance address for an SCM integration: `http(s)://host[:port][/path]`,
/// no credentials, no trailing slash.
pub fn parse_base_url(value: &str) -> Result<String, String> {
    let url = value.trim().trim_end_matches('/');
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return Err(format!("`{url}` is not an http(s) address: use e.g. https://github.example.com"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains('@') {
        return Err("must not carry credentials: name a credential secret instead".into());
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        return Err("must be a plain address without spaces, query or fragment".into());
    }
    Ok(url.to_owned())
}

/// The host (with port, for http) and the `owner/name` path of a clone URL:
/// `https://github.com/acme/app.git` gives `("github.com", "acme/app")`.
/// `None` for `file://` and addresses without a path.
pub fn repository_path(url: &str) -> Option<(String, String)> {
    let (host, path) = if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        let (authority, path) = rest.split_once('/')?;
        (authority.rsplit('@').next()?.to_owned(), path)
    } else if let Some(rest) = url.strip_prefix("ssh://") {
        let (authority, path) = rest.split_once('/')?;
        let host = authority.rsplit('@').next()?;
        (host.split(':').next()?.to_owned(), path)
    } else if url.starts_with("git@") {
        let (authority, path) = url.split_once(':')?;
        (authority.rsplit('@').next()?.to_owned(), path)
    } else {
        return None;
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_matches('/');
    if host.is_empty() || !path.contains('/') {
        return None;
    }
    Some((host, path.to_owned()))
}

/// The values a branch-name template's placeholders take.
#[derive(Debug, Clone, Copy)]
pub struct BranchVars<'a> {
    pub ticket: &'a str,
    pub clanker: &'a str,
    pub job: &'a str,
    pub date: &'a str,
}

/// The longest branch name a template renders to; longer ones are cut.
pub const MAX_RENDERED_BRANCH: usize = 100;

/// Renders a branch-name template and sanitizes the result into a valid ref.
pub fn render_branch_template(template: &str, vars: &BranchVars<'_>) -> Result<String, String> {
    let mut rendered = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("has a `{{` without a closing `}}`".into());
        };
        rendered.push_str(match after[..end].trim() {
            "ticket" => vars.ticket,
            "clanker" => vars.clanker,
            "job" => vars.job,
            "date" => vars.date,
            other => return Err(format!("uses the unknown placeholder `{{{{ {other} }}}}`")),
        });
        rest = &after[end + 2..];
    }
    rendered.push_str(rest);
    sanitize_branch_name(&rendered)
}

/// Turns any text into a branch name git accepts: characters git refuses
/// (spaces, unicode, `~^:?*[\`, controls) become `-`, runs of `-`, `.` and
/// `/` collapse, no part starts with `.` or ends with `.lock`, no leading `-`,
/// and the whole is cut to [`MAX_RENDERED_BRANCH`] bytes.
pub fn sanitize_branch_name(raw: &str) -> Result<String, String> {
    let mapped: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') { c } else { '-' })
        .collect();
    let mut collapsed = String::with_capacity(mapped.len());
    for c in mapped.chars() {
        let last = collapsed.chars().last();
        let repeat = matches!((last, c), (Some('-'), '-') | (Some('.'), '.') | (Some('/'), '/'));
        if !repeat {
            collapsed.push(c);
        }
    }
    let tidy_part = |part: &str| -> String {
        let mut part = part.trim_start_matches(['.', '-']).to_owned();
        loop {
            let before = part.len();
            if let Some(stripped) = part.strip_suffix(".lock") {
                part = stripped.to_owned();
            }
            part = part.trim_end_matches(['.', '-']).to_owned();
            if part.len() == before {
                break part;
            }
        }
    };
    let mut name = collapsed.split('/').map(tidy_part).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("/");
    if name.len() > MAX_RENDERED_BRANCH {
        name.truncate(MAX_RENDERED_BRANCH);
        name = name.split('/').map(tidy_part).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("/");
    }
    if name.is_empty() || name == "@" {
        return Err(format!("`{raw}` leaves nothing usable as a branch name"));
    }
    parse_branch_name(&name)
}

/// Whether a clone URL points at this machine's own files (`file://` or a
/// path), which a server refuses unless `VIBERGLASS_ALLOW_LOCAL_REPOSITORIES`
/// is set: a project could otherwise read any repository the server can.
pub fn is_local_repository(url: &str) -> bool {
    let url = url.trim();
    url.starts_with("file://") || url.starts_with('/') || url.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_branch_names_are_accepted() {
        for name in ["main", "release/1.2", "viberglass/abc-123", "feature_x"] {
            assert_eq!(parse_branch_name(name).unwrap(), name);
        }
    }

    #[test]
    fn names_git_refuses_are_rejected() {
        for name in ["", "-x", "a..b", "a b", "a~1", "x.lock", "a//b", "/a", "a/", "a/.b", "a:b"] {
            assert!(parse_branch_name(name).is_err(), "{name:?} should be rejected");
        }
    }

    #[test]
    fn clone_urls_with_embedded_credentials_are_refused() {
        let err = parse_repository_url("https://user:tok@github.com/a/b.git").unwrap_err();
        assert!(err.contains("credentials"), "{err}");
    }

    #[test]
    fn common_clone_urls_are_accepted() {
        for url in
            ["https://github.com/a/b.git", "git@github.com:a/b.git", "ssh://git@host/a/b", "file:///srv/repo.git"]
        {
            assert!(parse_repository_url(url).is_ok(), "{url}");
        }
        assert!(parse_repository_url("ftp://x/y").is_err());
        for hostile in [
            "ssh://-oProxyCommand=touch%20/tmp/x/repo",
            "ssh://[-oProxyCommand=x]/repo",
            "git@-oProxyCommand=x:repo",
            "https://-x/a/b",
        ] {
            assert!(parse_repository_url(hostile).is_err(), "{hostile}");
        }
    }

    #[test]
    fn templates_accept_known_placeholders_only() {
        assert!(parse_branch_template("viberglass/{{ ticket }}-{{clanker}}").is_ok());
        let err = parse_branch_template("vg/{{ user }}").unwrap_err();
        assert!(err.contains("unknown placeholder `{{ user }}`"), "{err}");
        assert!(parse_branch_template("vg/{{ ticket").is_err());
        assert!(parse_branch_template("vg bad/{{ ticket }}").is_err());
    }

    fn vars<'a>(ticket: &'a str) -> BranchVars<'a> {
        BranchVars { ticket, clanker: "claude", job: "0192abcd", date: "20261128" }
    }

    #[test]
    fn the_default_template_renders_the_ticket() {
        assert_eq!(
            render_branch_template(DEFAULT_BRANCH_TEMPLATE, &vars("0192f00dbeef")).unwrap(),
            "viberglass/0192f00dbeef"
        );
        assert_eq!(
            render_branch_template("vg/{{date}}/{{ clanker }}-{{ job }}", &vars("t")).unwrap(),
            "vg/20261128/claude-0192abcd"
        );
    }

    #[test]
    fn sanitizing_spaces_unicode_dots_and_dashes() {
        assert_eq!(sanitize_branch_name("fix the  login bug").unwrap(), "fix-the-login-bug");
        assert_eq!(sanitize_branch_name("café/ünïcode✓").unwrap(), "caf/n-code");
        assert_eq!(sanitize_branch_name("a..b/../c").unwrap(), "a.b/c");
        assert_eq!(sanitize_branch_name("--leading/-dash").unwrap(), "leading/dash");
        assert_eq!(sanitize_branch_name(".hidden/x.lock").unwrap(), "hidden/x");
        assert_eq!(sanitize_branch_name("a//b/").unwrap(), "a/b");
        assert_eq!(sanitize_branch_name("what?~^:*[\\]").unwrap(), "what");
        assert!(sanitize_branch_name("日本語").is_err());
        assert!(sanitize_branch_name("  ").is_err());
    }

    #[test]
    fn sanitizing_cuts_long_names_to_a_valid_ref() {
        let long = format!("viberglass/{}", "very-long-title-".repeat(20));
        let name = sanitize_branch_name(&long).unwrap();
        assert!(name.len() <= MAX_RENDERED_BRANCH, "{name}");
        assert!(!name.ends_with('-') && name.starts_with("viberglass/"), "{name}");
        // A cut that lands on `.` or `/` still yields a valid name.
        let dotted = format!("{}./x", "a".repeat(MAX_RENDERED_BRANCH - 1));
        assert!(parse_branch_name(&sanitize_branch_name(&dotted).unwrap()).is_ok());
    }

    #[test]
    fn every_rendered_name_is_accepted_by_git_rules() {
        for raw in ["x y z", "ünï", "a..b", "-x", "x.", "x.lock", "a/.b", "@", "a@{b}", "~/x", "x\ty\nz", "🚀 launch"]
        {
            if let Ok(name) = sanitize_branch_name(raw) {
                assert!(parse_branch_name(&name).is_ok(), "{raw:?} -> {name:?}");
            }
        }
    }

    #[test]
    fn repository_paths_come_from_any_clone_url() {
        let cases = [
            ("https://github.com/acme/app.git", "github.com", "acme/app"),
            ("http://127.0.0.1:8080/group/sub/app", "127.0.0.1:8080", "group/sub/app"),
            ("git@gitlab.com:group/app.git", "gitlab.com", "group/app"),
            ("ssh://git@host.example:2222/acme/app.git", "host.example", "acme/app"),
        ];
        for (url, host, path) in cases {
            assert_eq!(repository_path(url), Some((host.to_owned(), path.to_owned())), "{url}");
        }
        assert_eq!(repository_path("file:///srv/repo.git"), None);
        assert_eq!(repository_path("https://github.com/app.git"), None);
    }

    #[test]
    fn providers_and_api_roots() {
        assert_eq!(ScmProvider::for_host("github.com"), ScmProvider::GitHub);
        assert_eq!(ScmProvider::for_host("gitlab.com"), ScmProvider::GitLab);
        assert_eq!(ScmProvider::for_host("git.example:8443"), ScmProvider::Git);
        assert_eq!(ScmProvider::GitHub.api_url("https://github.com/").unwrap(), "https://api.github.com");
        assert_eq!(ScmProvider::GitHub.api_url("https://ghe.corp").unwrap(), "https://ghe.corp/api/v3");
        assert_eq!(ScmProvider::GitLab.api_url("http://127.0.0.1:9/").unwrap(), "http://127.0.0.1:9/api/v4");
        assert!(parse_base_url("https://u:p@github.com").is_err());
        assert!(parse_base_url("github.com").is_err());
        assert_eq!(parse_base_url("https://ghe.corp/").unwrap(), "https://ghe.corp");
    }
}
