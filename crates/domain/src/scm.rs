//! Repository addresses, branch names and branch-name templates.

/// A git branch name that `git check-ref-format --branch` would accept.
pub fn parse_branch_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 200 {
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
    if let Some(c) = name
        .chars()
        .find(|c| c.is_ascii_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("it must not contain {c:?}"));
    }
    if name.split('/').any(|part| part.starts_with('.')) {
        return bad("no part of it may start with `.`");
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
    }

    #[test]
    fn templates_accept_known_placeholders_only() {
        assert!(parse_branch_template("viberglass/{{ ticket }}-{{clanker}}").is_ok());
        let err = parse_branch_template("vg/{{ user }}").unwrap_err();
        assert!(err.contains("unknown placeholder `{{ user }}`"), "{err}");
        assert!(parse_branch_template("vg/{{ ticket").is_err());
        assert!(parse_branch_template("vg bad/{{ ticket }}").is_err());
    }
}
