//! The client commands (`login`, `projects`, `tickets`, `run`, `jobs`,
//! `approve`, `secrets list`, `clankers`): a terminal front end to a running
//! server's API, reading its answers into the same read models the server
//! writes them from, and printing them as a table or as JSON.
//!
//! The server comes from `--server`, then `VIBERGLASS_URL`, then the file
//! `viberglass login` wrote (`$VIBERGLASS_CLI_CONFIG`, else
//! `$XDG_CONFIG_HOME/viberglass/cli.toml`, else `~/.config/viberglass/cli.toml`,
//! mode 0600). The token comes from `VIBERGLASS_TOKEN`, then that file, and
//! the file's token is only ever sent to the server it was made on.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use viberglass_domain::{Clanker, Job, JobEvent, Page, Project, Secret, Ticket};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The server's URL, e.g. http://127.0.0.1:8888 [default: the one `viberglass login` saved].
    #[arg(long, env = "VIBERGLASS_URL")]
    server: Option<String>,
    /// An API token [default: the one `viberglass login` saved for this server].
    #[arg(long, env = "VIBERGLASS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    connection: Connection,
    /// The account's email.
    #[arg(long)]
    email: Option<String>,
    /// The password (else read from VIBERGLASS_PASSWORD, else one line of standard input).
    #[arg(long, env = "VIBERGLASS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TicketsCommand {
    /// Tickets, newest first.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this project's (slug or id).
        #[arg(long)]
        project: Option<String>,
        /// Only tickets whose title or description contains this.
        #[arg(long)]
        search: Option<String>,
        /// At most this many (1 to 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// File a ticket.
    Create {
        #[command(flatten)]
        connection: Connection,
        /// The project (slug or id).
        #[arg(long)]
        project: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        /// `low`, `medium`, `high` or `critical`.
        #[arg(long)]
        severity: Option<String>,
    },
    /// One ticket.
    Show {
        #[command(flatten)]
        connection: Connection,
        ticket: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this ticket's.
        #[arg(long)]
        ticket: Option<String>,
        /// Only jobs with this status (`queued`, `active`, `failed`, ...).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job: its status and, when it failed, the layer, the cause and the fix.
    Show {
        #[command(flatten)]
        connection: Connection,
        job: String,
    },
    /// A job's log: its progress, log lines and agent events.
    Logs {
        #[command(flatten)]
        connection: Connection,
        job: String,
        /// Keep printing new lines as they come (Server-Sent Events) until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    connection: Connection,
    /// The ticket's id.
    ticket: String,
    /// `research`, `planning` or `execution`.
    phase: String,
    /// The clanker to run it with (slug or id).
    #[arg(long)]
    clanker: String,
}

#[derive(Args, Debug)]
pub struct ApproveArgs {
    #[command(flatten)]
    connection: Connection,
    /// The ticket's id.
    ticket: String,
    /// The phase whose document is approved: `research` or `planning`.
    phase: String,
    #[arg(long, default_value = "")]
    comment: String,
    /// Approve and start the next phase at once with this clanker (needs the maintainer role).
    #[arg(long = "continue-with", value_name = "CLANKER")]
    continue_with: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    connection: Connection,
}

/// What went wrong, printed as the API said it: its message, and the fix.
#[derive(Debug)]
pub struct Failure {
    message: String,
    fix: Option<String>,
    details: Vec<String>,
}

impl Failure {
    fn new(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { message: message.into(), fix: Some(fix.into()), details: Vec::new() }
    }

    /// Prints to standard error; what the server said is shown without its control characters.
    fn print(&self) {
        eprintln!("viberglass: error: {}", printable(&self.message));
        for detail in &self.details {
            eprintln!("  {}", printable(detail));
        }
        if let Some(fix) = &self.fix {
            eprintln!("  fix: {}", printable(fix));
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The API's error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
    hint: Option<String>,
    #[serde(default)]
    fields: Vec<FieldError>,
}

#[derive(Deserialize)]
struct FieldError {
    field: String,
    message: String,
}

/// What `viberglass login` keeps.
#[derive(Serialize, Deserialize, Default)]
struct Saved {
    server: String,
    token: String,
    email: Option<String>,
}

fn config_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("VIBERGLASS_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => {
                return Err(Failure::new(
                    "cannot tell where to keep the CLI's settings: neither XDG_CONFIG_HOME nor HOME is set",
                    "set VIBERGLASS_CLI_CONFIG to a file path",
                ));
            }
        },
    };
    Ok(base.join("viberglass").join("cli.toml"))
}

fn load_saved() -> Result<Option<Saved>> {
    let path = config_path()?;
    let unreadable = |e: std::io::Error| {
        Failure::new(format!("cannot read {}: {e}", path.display()), "check the file's permissions")
    };
    // One open: the file checked is the file read.
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    check_private(&path, &file.metadata().map_err(unreadable)?)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(unreadable)?;
    toml::from_str(&text).map(Some).map_err(|e| {
        // Not the error's own text: it quotes the offending line, which can be the token's.
        let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        Failure::new(
            format!(
                "{} is not a valid CLI settings file{}: {}",
                path.display(),
                line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                e.message()
            ),
            "run `viberglass login` again, or delete the file",
        )
    })
}

/// A settings file holds a token: it is only read when its owner is this user and nobody else can read or change it.
#[cfg(unix)]
fn check_private(path: &std::path::Path, metadata: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(Failure::new(
            format!(
                "{} belongs to another user (uid {}), so its token cannot be trusted",
                path.display(),
                metadata.uid()
            ),
            "delete it and run `viberglass login` again, or set VIBERGLASS_CLI_CONFIG to a file of your own",
        ));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(Failure::new(
            format!(
                "{} can be read or changed by other users (mode {:o}), and it holds a token",
                path.display(),
                metadata.mode() & 0o777
            ),
            format!("run `chmod 600 {}` (and replace the token if others could read it)", path.display()),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &std::path::Path, _metadata: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

/// Writes the settings file readable by its owner only (mode 0600, in a 0700 directory).
fn save(saved: &Saved) -> Result<PathBuf> {
    let path = config_path()?;
    let fail = |e: std::io::Error| {
        Failure::new(format!("cannot write {}: {e}", path.display()), "set VIBERGLASS_CLI_CONFIG to a writable path")
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(fail)?;
    }
    let text =
        toml::to_string(saved).map_err(|e| Failure::new(format!("cannot encode the settings: {e}"), "report this"))?;
    // A new file with a random name (created 0600, never following a planted link), renamed over the old one.
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.as_file().sync_all().map_err(fail)?;
    file.persist(&path).map_err(|e| fail(e.error))?;
    Ok(path)
}

fn normalize(server: &str) -> Result<String> {
    let server = server.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(server).map_err(|e| {
        Failure::new(format!("`{server}` is not a server URL: {e}"), "pass --server http://host:port (or https://)")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Failure::new(
            format!("`{server}` is not an http(s) URL"),
            "pass --server http://host:port (or https://)",
        ));
    }
    Ok(server.to_owned())
}

/// A signed-in connection to one server.
struct Api {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
    output: Output,
}

impl Api {
    fn open(connection: &Connection, needs_token: bool) -> Result<Api> {
        let saved = load_saved()?;
        let server = match (&connection.server, &saved) {
            (Some(server), _) => normalize(server)?,
            (None, Some(saved)) => normalize(&saved.server)?,
            (None, None) => {
                return Err(Failure::new(
                    "no server given",
                    "pass --server URL, set VIBERGLASS_URL, or run `viberglass login --server URL`",
                ));
            }
        };
        // The saved token belongs to the server it was made on: never sent anywhere else.
        let token = connection.token.clone().or_else(|| {
            saved.as_ref().filter(|s| normalize(&s.server).ok().as_deref() == Some(&server)).map(|s| s.token.clone())
        });
        if needs_token && token.is_none() {
            return Err(Failure::new(
                format!("not signed in to {server}"),
                format!("run `viberglass login --server {server}`, or set VIBERGLASS_TOKEN to an API token"),
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("viberglass-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            // The API never redirects: a redirect would resend a password or a body to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Failure::new(format!("cannot make an HTTP client: {e}"), "report this"))?;
        Ok(Api { http, server, token, output: connection.output })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.server));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                cause = format!("{cause}: {inner}");
                source = inner.source();
            }
            Failure::new(
                format!("cannot reach {}: {cause}", self.server),
                "check that the server runs and that --server (or VIBERGLASS_URL) is its URL",
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refusal(response).await)
    }

    /// The API's own message and fix for a refused request.
    async fn refusal(&self, response: reqwest::Response) -> Failure {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => {
                let fix = body.hint.unwrap_or_else(|| match status.as_u16() {
                    400 if !body.fields.is_empty() => "correct the fields named above and try again".into(),
                    400 => "correct the request as the message says and try again".into(),
                    401 => format!("run `viberglass login --server {}` again", self.server),
                    403 => "ask an administrator or the project's maintainer for the role this needs".into(),
                    404 => "check the id or slug: the list commands (`viberglass tickets list`, `jobs list`, \
                            `projects`, `clankers`) show what exists"
                        .into(),
                    409 | 412 => "reload what you are changing and try again".into(),
                    422 => "do first what the message says, then try again".into(),
                    429 => "wait a moment and try again".into(),
                    _ => "try again; if it keeps failing, an administrator finds the cause in the server's log \
                          (the request id is in its x-request-id answer header)"
                        .into(),
                });
                Failure {
                    message: format!("{} ({} {})", body.message, status.as_u16(), body.code),
                    fix: Some(fix),
                    details: body.fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect(),
                }
            }
            Err(_) => Failure::new(
                format!("the server answered {status}: {}", text.chars().take(300).collect::<String>()),
                "check that --server is a Viberglass server",
            ),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.send(self.request(reqwest::Method::GET, path)).await?;
        self.read(response).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        let response = self.send(self.request(reqwest::Method::POST, path).json(body)).await?;
        self.read(response).await
    }

    async fn read<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<T> {
        let text = response
            .text()
            .await
            .map_err(|e| Failure::new(format!("the answer from {} broke off: {e}", self.server), "try again"))?;
        serde_json::from_str(&text).map_err(|e| {
            Failure::new(
                format!("cannot read the server's answer ({e}); is it the same version as this CLI?"),
                "use the `viberglass` binary of the server's version",
            )
        })
    }

    /// Prints `value` as JSON, or as `table` for people.
    fn print<T: Serialize>(&self, value: &T, table: impl FnOnce() -> String) {
        match self.output {
            Output::Json => println!("{}", json_text(&serde_json::to_string_pretty(value).unwrap_or_default())),
            Output::Table => print!("{}", printable(&table())),
        }
    }
}

/// Is `c` one a terminal acts on rather than shows: a control character (an escape sequence starts with one) or a
/// bidirectional override that makes text read differently from what it is?
fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Text from the server as it may reach a terminal: every control character but newline and tab, and every
/// bidirectional override, shown as U+FFFD. A title cannot move the cursor, recolour the screen or retitle the window.
fn printable(text: &str) -> String {
    text.chars().map(|c| if unsafe_char(c) { '\u{FFFD}' } else { c }).collect()
}

/// JSON as printed: serde_json leaves DEL, the C1 controls and the overrides unescaped inside strings; they are
/// written as `\uXXXX` instead (the same value for a JSON reader, inert on a terminal).
fn json_text(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if (c as u32) >= 0x7f && unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A value's serialized name (`in_review`, `claude-code`...).
fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "-".into(),
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn one_line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    if first.chars().count() > max {
        format!("{}…", first.chars().take(max - 1).collect::<String>())
    } else {
        first.into()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters: safe in a path segment and in a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An id or slug as one path segment. `.` and `..` (however encoded) would be resolved away by the URL parser and
/// send the request to another route, so they are refused, like an empty one.
fn segment(value: &str, what: &str) -> Result<String> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(Failure::new(
            format!("`{}` is not a {what}", printable(value)),
            format!("pass the {what}'s id or slug, as `viberglass tickets list` or the web UI shows it"),
        ));
    }
    Ok(encode(value))
}

/// A list route with its page size and the filters given, each value percent-encoded.
fn list_path(route: &str, limit: u32, filters: &[(&str, Option<String>)]) -> String {
    let mut path = format!("{route}?limit={limit}");
    for (name, value) in filters {
        if let Some(value) = value {
            path.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    path
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}"), "report this"))
}

/// Runs one client command and turns its failure into the API's message and fix on standard error.
pub fn run(command: impl std::future::Future<Output = Result<()>>) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = runtime().and_then(|rt| rt.block_on(command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.print();
            ExitCode::FAILURE
        }
    }
}

/// One line of standard input; on a terminal it is not echoed.
fn read_password(email: &str) -> Result<String> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let failed = |e: std::io::Error| Failure::new(format!("cannot read the password: {e}"), "pass --password");
    let mut line = String::new();
    if stdin.is_terminal() {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let before = tcgetattr(&stdin).map_err(|e| failed(e.into()))?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        eprint!("Password for {}: ", printable(email));
        tcsetattr(&stdin, OptionalActions::Flush, &quiet).map_err(|e| failed(e.into()))?;
        let read = stdin.lock().read_line(&mut line);
        let restored = tcsetattr(&stdin, OptionalActions::Now, &before);
        read.map_err(failed)?;
        restored.map_err(|e| failed(e.into()))?;
    } else {
        stdin.lock().read_line(&mut line).map_err(failed)?;
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn login(args: LoginArgs) -> Result<()> {
    let api = Api::open(&Connection { token: None, ..args.connection.clone() }, false)?;
    #[derive(Deserialize)]
    struct Created {
        token: String,
    }
    let token = match args.connection.token.clone() {
        // A token made in the web UI: checked, then kept.
        Some(token) => token,
        None => {
            let email = args.email.clone().ok_or_else(|| {
                Failure::new(
                    "no account given",
                    "pass --email (and --password, VIBERGLASS_PASSWORD or the password on standard input), or --token",
                )
            })?;
            let password = match args.password.clone() {
                Some(password) => password,
                None => read_password(&email)?,
            };
            let signed = api
                .send(
                    api.request(reqwest::Method::POST, "/api/v1/auth/login")
                        .json(&serde_json::json!({"email": email, "password": password})),
                )
                .await?;
            let cookie = signed
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.split(';').next())
                .collect::<Vec<_>>()
                .join("; ");
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
            let name = if host.is_empty() { "viberglass CLI".to_owned() } else { format!("viberglass CLI on {host}") };
            let created: Created = api
                .read(
                    api.send(
                        api.request(reqwest::Method::POST, "/api/v1/me/tokens")
                            .header(reqwest::header::COOKIE, cookie)
                            .json(&serde_json::json!({"name": name})),
                    )
                    .await?,
                )
                .await?;
            created.token
        }
    };
    let api = Api { token: Some(token.clone()), ..api };
    let me: serde_json::Value = api.get("/api/v1/me").await?;
    let email = me["user"]["email"].as_str().map(str::to_owned);
    let path = save(&Saved { server: api.server.clone(), token, email: email.clone() })?;
    api.print(&me, || {
        format!(
            "Signed in to {} as {}; the token is in {}\n",
            api.server,
            email.as_deref().unwrap_or("nobody (authentication is off)"),
            path.display()
        )
    });
    Ok(())
}

pub async fn projects(args: ListArgs) -> Result<()> {
    let api = Api::open(&args.connection, true)?;
    let page: Page<Project> = api.get("/api/v1/projects?limit=200").await?;
    api.print(&page, || {
        if page.items.is_empty() {
            return "No projects yet: an administrator creates one in the web UI (Projects → New) or with POST /api/v1/projects.\n".into();
        }
        table(
            &["SLUG", "NAME", "REPOSITORY", "ID"],
            page.items
                .iter()
                .map(|p| {
                    vec![
                        p.slug.as_str().to_owned(),
                        p.name.clone(),
                        p.repository_url.clone().unwrap_or_else(|| "-".into()),
                        p.id.to_string(),
                    ]
                })
                .collect(),
        )
    });
    Ok(())
}

fn ticket_rows(tickets: &[Ticket]) -> Vec<Vec<String>> {
    tickets
        .iter()
        .map(|t| vec![t.id.to_string(), label(&t.status), label(&t.phase), label(&t.severity), one_line(&t.title, 60)])
        .collect()
}

pub async fn tickets(command: TicketsCommand) -> Result<()> {
    match command {
        TicketsCommand::List { connection, project, search, limit } => {
            let api = Api::open(&connection, true)?;
            let path = list_path("/api/v1/tickets", limit, &[("project", project), ("q", search)]);
            let page: Page<Ticket> = api.get(&path).await?;
            api.print(&page, || {
                if page.items.is_empty() {
                    return "No tickets match: file one with `viberglass tickets create --project SLUG --title ...`.\n"
                        .into();
                }
                table(&["ID", "STATUS", "PHASE", "SEVERITY", "TITLE"], ticket_rows(&page.items))
            });
        }
        TicketsCommand::Create { connection, project, title, description, severity } => {
            let api = Api::open(&connection, true)?;
            let mut body = serde_json::json!({"title": title, "description": description});
            if let Some(severity) = severity {
                body["severity"] = severity.into();
            }
            let ticket: Ticket =
                api.post(&format!("/api/v1/projects/{}/tickets", segment(&project, "project")?), &body).await?;
            api.print(&ticket, || format!("Filed ticket {}: {}\n", ticket.id, ticket.title));
        }
        TicketsCommand::Show { connection, ticket } => {
            let api = Api::open(&connection, true)?;
            let ticket: Ticket = api.get(&format!("/api/v1/tickets/{}", segment(&ticket, "ticket")?)).await?;
            api.print(&ticket, || {
                let mut out =
                    table(&["ID", "STATUS", "PHASE", "SEVERITY", "TITLE"], ticket_rows(std::slice::from_ref(&ticket)));
                if let Some(url) = &ticket.pull_request_url {
                    out.push_str(&format!("\nPull request: {url}\n"));
                }
                if !ticket.description.is_empty() {
                    out.push_str(&format!("\n{}\n", ticket.description));
                }
                out
            });
        }
    }
    Ok(())
}

fn job_rows(jobs: &[Job]) -> Vec<Vec<String>> {
    jobs.iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                label(&j.phase),
                label(&j.status),
                j.ticket_id.map_or_else(|| "-".into(), |t| t.to_string()),
                one_line(j.status_message.as_deref().unwrap_or("-"), 70),
            ]
        })
        .collect()
}

fn show_job(job: &Job) -> String {
    let mut out = table(&["ID", "PHASE", "STATUS", "TICKET", "MESSAGE"], job_rows(std::slice::from_ref(job)));
    if let Some(failure) = &job.failure {
        out.push_str(&format!(
            "\nFailed in the {} layer ({}): {}\n",
            label(&failure.layer),
            failure.code,
            failure.message
        ));
        out.push_str(if failure.retryable {
            "Running it again unchanged can succeed.\n"
        } else {
            "Running it again unchanged will fail the same way: fix the cause first.\n"
        });
    }
    for (name, value) in [
        ("Branch", &job.branch),
        ("Commit", &job.commit_sha),
        ("Pull request", &job.pull_request_url),
        ("Queued by request", &job.request_id),
    ] {
        if let Some(value) = value {
            out.push_str(&format!("{name}: {value}\n"));
        }
    }
    out
}

pub async fn run_phase(args: RunArgs) -> Result<()> {
    let api = Api::open(&args.connection, true)?;
    let job: Job = api
        .post(
            &format!("/api/v1/tickets/{}/runs", segment(&args.ticket, "ticket")?),
            &serde_json::json!({"phase": args.phase, "clanker": args.clanker}),
        )
        .await?;
    api.print(&job, || {
        format!(
            "Queued {} job {} ({}); follow it with `viberglass jobs logs {} --follow`\n",
            label(&job.phase),
            job.id,
            label(&job.status),
            job.id
        )
    });
    Ok(())
}

/// One log line per event: a message's own line breaks are shown as `⏎`, so no event can print a line that looks
/// like another event, or like the stream's end.
fn event_line(event: &JobEvent) -> String {
    format!(
        "{} {:<5} {}",
        event.created_at.time().to_string().split('.').next().unwrap_or_default(),
        label(&event.level),
        event.message.trim_end_matches(['\n', '\r']).replace("\r\n", "\n").replace(['\n', '\u{2028}', '\u{2029}'], "⏎")
    )
}

pub async fn jobs(command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::List { connection, ticket, status, limit } => {
            let api = Api::open(&connection, true)?;
            let path = list_path("/api/v1/jobs", limit, &[("ticket", ticket), ("status", status)]);
            let page: Page<Job> = api.get(&path).await?;
            api.print(&page, || {
                if page.items.is_empty() {
                    return "No jobs match: start one with `viberglass run TICKET PHASE --clanker CLANKER`.\n".into();
                }
                table(&["ID", "PHASE", "STATUS", "TICKET", "MESSAGE"], job_rows(&page.items))
            });
        }
        JobsCommand::Show { connection, job } => {
            let api = Api::open(&connection, true)?;
            let job: Job = api.get(&format!("/api/v1/jobs/{}", segment(&job, "job")?)).await?;
            api.print(&job, || show_job(&job));
        }
        JobsCommand::Logs { connection, job, follow } => {
            let api = Api::open(&connection, true)?;
            let job = segment(&job, "job")?;
            if follow {
                return follow_events(&api, &job).await;
            }
            #[derive(Deserialize, Serialize)]
            struct EventPage {
                items: Vec<JobEvent>,
                next_after: Option<i64>,
            }
            let mut after = 0;
            let mut all = Vec::new();
            loop {
                let page: EventPage = api.get(&format!("/api/v1/jobs/{job}/events?after={after}&limit=1000")).await?;
                all.extend(page.items);
                match page.next_after {
                    Some(next) => after = next,
                    None => break,
                }
            }
            api.print(&all, || all.iter().map(|e| event_line(e) + "\n").collect());
        }
    }
    Ok(())
}

/// The longest line, and the largest event, the log stream takes (a job event is at most 64 KiB).
const MAX_STREAM_LINE: usize = 1 << 20;

/// Prints a job's events from the start as they arrive, until the server's `end` event.
/// A dropped stream is resumed where it broke (`Last-Event-ID`), without gaps or repeats.
async fn follow_events(api: &Api, job: &str) -> Result<()> {
    let mut last: Option<String> = None;
    let mut retries = 0;
    loop {
        let mut request = api.request(reqwest::Method::GET, &format!("/api/v1/jobs/{job}/events/stream"));
        if let Some(id) = &last {
            request = request.header("last-event-id", id);
        }
        let mut response = api.send(request.header(reqwest::header::ACCEPT, "text/event-stream")).await?;
        let mut buffer: Vec<u8> = Vec::new();
        let (mut event, mut data, mut id) = (String::new(), String::new(), None::<String>);
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) | Err(_) => break,
            };
            // Only the new bytes are searched for a line end: a stream of tiny chunks costs no more than one.
            let searched = buffer.len();
            buffer.extend_from_slice(&chunk);
            let mut from = searched;
            if !buffer[from..].contains(&b'\n') && buffer.len() > MAX_STREAM_LINE {
                return Err(Failure::new(
                    format!("the event stream from {} sent a line over {MAX_STREAM_LINE} bytes", api.server),
                    "check that the URL is a Viberglass server (a proxy may be answering instead)",
                ));
            }
            // Split on bytes: a character cut between two chunks is decoded whole.
            while let Some(end) = buffer[from..].iter().position(|b| *b == b'\n').map(|i| from + i) {
                let raw: Vec<u8> = buffer.drain(..=end).collect();
                from = 0;
                if data.len() > MAX_STREAM_LINE {
                    return Err(Failure::new(
                        format!("the event stream from {} sent an event over {MAX_STREAM_LINE} bytes", api.server),
                        "check that the URL is a Viberglass server (a proxy may be answering instead)",
                    ));
                }
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    // One event complete.
                    if event == "end" {
                        let status = serde_json::from_str::<serde_json::Value>(&data)
                            .ok()
                            .and_then(|v| v["status"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "ended".into());
                        match api.output {
                            Output::Table => println!("-- the job {}", printable(&status)),
                            Output::Json => {
                                println!("{}", json_text(&serde_json::json!({"end": {"status": status}}).to_string()))
                            }
                        }
                        return Ok(());
                    }
                    if !data.is_empty() {
                        match serde_json::from_str::<JobEvent>(&data) {
                            Ok(parsed) => match api.output {
                                Output::Json => {
                                    println!("{}", json_text(&serde_json::to_string(&parsed).unwrap_or_default()))
                                }
                                Output::Table => println!("{}", printable(&event_line(&parsed))),
                            },
                            Err(_) => println!("{}", printable(&data)),
                        }
                        let _ = std::io::stdout().flush();
                        retries = 0;
                    }
                    if id.is_some() {
                        last = id.take();
                    }
                    event.clear();
                    data.clear();
                } else if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                }
            }
        }
        retries += 1;
        if retries > 5 {
            return Err(Failure::new(
                format!("the event stream from {} kept breaking off", api.server),
                "check the network between here and the server (a proxy must not buffer text/event-stream)",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500 * retries)).await;
    }
}

pub async fn approve(args: ApproveArgs) -> Result<()> {
    let api = Api::open(&args.connection, true)?;
    let ticket = segment(&args.ticket, "ticket")?;
    match &args.continue_with {
        Some(clanker) => {
            let job: Job = api
                .post(
                    &format!("/api/v1/tickets/{ticket}/approve-and-continue"),
                    &serde_json::json!({"phase": args.phase, "clanker": clanker, "comment": args.comment}),
                )
                .await?;
            api.print(&job, || {
                format!("Approved the {} document; queued {} job {}\n", args.phase, label(&job.phase), job.id)
            });
        }
        None => {
            let answer: serde_json::Value = api
                .post(
                    &format!("/api/v1/tickets/{ticket}/documents/{}/approval", segment(&args.phase, "phase")?),
                    &serde_json::json!({"action": "approve", "comment": args.comment}),
                )
                .await?;
            api.print(&answer, || format!("Approved the {} document of ticket {}\n", args.phase, args.ticket));
        }
    }
    Ok(())
}

pub async fn secrets(args: ListArgs) -> Result<()> {
    let api = Api::open(&args.connection, true)?;
    let secrets: Vec<Secret> = api.get("/api/v1/secrets").await?;
    api.print(&secrets, || {
        if secrets.is_empty() {
            return "No secrets yet: an administrator adds them in the web UI (Secrets) or with POST /api/v1/secrets.\n"
                .into();
        }
        table(
            &["NAME", "BACKEND", "REFERENCE", "DESCRIPTION"],
            secrets
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        label(&s.backend),
                        s.reference.clone().unwrap_or_else(|| "-".into()),
                        one_line(&s.description, 50),
                    ]
                })
                .collect(),
        )
    });
    Ok(())
}

pub async fn clankers(args: ListArgs) -> Result<()> {
    let api = Api::open(&args.connection, true)?;
    let page: Page<Clanker> = api.get("/api/v1/clankers?limit=200").await?;
    api.print(&page, || {
        if page.items.is_empty() {
            return "No clankers yet: an administrator saves one in the web UI (Clankers → New).\n".into();
        }
        table(
            &["SLUG", "AGENT", "COMPUTE", "STATUS", "MESSAGE"],
            page.items
                .iter()
                .map(|c| {
                    vec![
                        c.slug.as_str().to_owned(),
                        label(&c.agent),
                        label(&c.compute),
                        label(&c.status),
                        one_line(c.status_message.as_deref().unwrap_or("-"), 60),
                    ]
                })
                .collect(),
        )
    });
    Ok(())
}

/// Everything `GET /api/v1/doctor` found, one finding per block: exit 1 when any is an error.
pub async fn doctor(args: ListArgs) -> Result<()> {
    use viberglass_domain::doctor::{DoctorReport, FindingSeverity};
    let api = Api::open(&args.connection, true)?;
    // The server bounds each outside call; the whole report gets three minutes.
    let request = api.request(reqwest::Method::GET, "/api/v1/doctor").timeout(std::time::Duration::from_secs(180));
    let report: DoctorReport = api.read(api.send(request).await?).await?;
    api.print(&report, || {
        let mut out = String::new();
        for f in &report.findings {
            let severity = if f.severity == FindingSeverity::Error { "ERROR" } else { "WARNING" };
            out.push_str(&format!("{severity} [{}] {}\n", f.layer, one_line(&f.subject, 120)));
            out.push_str(&format!("  {}\n", one_line(&f.cause, 400)));
            out.push_str(&format!("  fix: {}\n\n", one_line(&f.fix, 400)));
        }
        let errors = report.findings.iter().filter(|f| f.severity == FindingSeverity::Error).count();
        let warnings = report.findings.len() - errors;
        let things: u32 = report.checks.iter().map(|c| c.checked).sum();
        out.push_str(&format!(
            "{} checks over {things} things: {errors} error(s), {warnings} warning(s)\n",
            report.checks.len()
        ));
        out
    });
    if report.healthy {
        Ok(())
    } else {
        Err(Failure::new(
            "the doctor found something broken",
            "fix each ERROR above as its fix line says, then run `viberglass doctor` again",
        ))
    }
}

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    connection: Connection,
    /// A job: it, its ticket, log, clanker and the webhook deliveries around it.
    #[arg(long, conflicts_with_all = ["ticket", "since", "until"])]
    job: Option<String>,
    /// A ticket: it, its approvals and override, its latest jobs and their logs.
    #[arg(long, conflicts_with_all = ["since", "until"])]
    ticket: Option<String>,
    /// The start of a time window (RFC 3339, e.g. 2026-12-04T10:00:00Z), with --until.
    #[arg(long, requires = "until")]
    since: Option<String>,
    /// The end of the window, with --since.
    #[arg(long, requires = "since")]
    until: Option<String>,
    /// Where to write the zip [default: the server's file name, in the current directory].
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Downloads the diagnostics bundle (`GET /api/v1/diagnostics`) into one zip file.
pub async fn diagnose(args: DiagnoseArgs) -> Result<()> {
    let api = Api::open(&args.connection, true)?;
    let path = match (&args.job, &args.ticket, &args.since, &args.until) {
        (Some(job), None, None, None) => format!("/api/v1/jobs/{}/diagnostics", segment(job, "job")?),
        (None, Some(ticket), None, None) => format!("/api/v1/tickets/{}/diagnostics", segment(ticket, "ticket")?),
        (None, None, Some(since), Some(until)) => {
            format!("/api/v1/diagnostics?since={}&until={}", encode(since), encode(until))
        }
        _ => {
            return Err(Failure::new(
                "say what the bundle is about",
                "pass --job ID, --ticket ID, or --since TIME --until TIME",
            ));
        }
    };
    let response = api.send(api.request(reqwest::Method::GET, &path)).await?;
    let named = response
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("filename=\"").nth(1))
        .and_then(|v| v.split('"').next())
        // Only a name the server makes: never one that would land on a file people keep (.bashrc, Makefile).
        .filter(|name| {
            name.strip_prefix("viberglass-").and_then(|rest| rest.strip_suffix(".zip")).is_some_and(|middle| {
                !middle.is_empty() && middle.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        })
        .map(str::to_owned)
        .unwrap_or_else(|| "viberglass-diagnostics.zip".to_owned());
    const MAX_BUNDLE: u64 = 256 << 20;
    if response.content_length().is_some_and(|n| n > MAX_BUNDLE) {
        return Err(Failure::new(
            format!("the bundle from {} is larger than {} MiB", api.server, MAX_BUNDLE >> 20),
            "ask for a narrower one: --job, or a shorter --since/--until window",
        ));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Failure::new(format!("the bundle from {} broke off: {e}", api.server), "try again"))?;
    let path = args.out.unwrap_or_else(|| std::path::PathBuf::from(&named));
    // A new file only: an existing one (or a link planted in its place) is never overwritten.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes));
    written.map_err(|e| {
        Failure::new(
            format!("cannot write {}: {e}", path.display()),
            "pass --out with a new file's path (an existing file is not overwritten)",
        )
    })?;
    println!(
        "Wrote {} ({} bytes). It holds no stored secret values, but it does hold ticket text and job logs: review it \
         before you share it.",
        path.display(),
        bytes.len()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The server [default: http://127.0.0.1:$VIBERGLASS_PORT, the port defaulting to 8888].
    #[arg(long)]
    url: Option<String>,
    /// Ask `/readyz` (the database answers and its schema is current) instead of `/healthz` (the process is up).
    #[arg(long)]
    ready: bool,
}

/// One probe, no token: exit 0 when the server answers 200 within 5 seconds.
pub async fn health(args: HealthArgs) -> Result<()> {
    let url = match args.url {
        Some(url) => normalize(&url)?,
        None => {
            let port = std::env::var("VIBERGLASS_PORT").ok().filter(|p| !p.trim().is_empty());
            format!("http://127.0.0.1:{}", port.as_deref().map_or("8888", str::trim))
        }
    };
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| Failure::new(format!("cannot start the HTTP client: {e}"), "report this"))?;
    let response = http.get(format!("{url}{path}")).send().await.map_err(|e| {
        Failure::new(format!("{url}{path} did not answer: {e}"), "check that the server runs and listens there")
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(Failure::new(
            format!("{url}{path} answered {status}: {}", one_line(&body, 300)),
            "read the server's log; /readyz names what is not ready",
        ));
    }
    println!("{}", printable(&one_line(&body, 300)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let out = table(&["A", "LONG"], vec![vec!["xyz".into(), "1".into()], vec!["b".into(), "22".into()]]);
        assert_eq!(out, "A    LONG\nxyz  1\nb    22\n");
    }

    #[test]
    fn server_urls_are_checked_and_trimmed() {
        assert_eq!(normalize(" http://127.0.0.1:8888/ ").unwrap(), "http://127.0.0.1:8888");
        assert!(normalize("127.0.0.1:8888").is_err());
        assert!(normalize("ftp://example.com").is_err());
    }

    #[test]
    fn path_and_query_values_are_percent_encoded() {
        assert_eq!(encode("a b/c?d&e=f"), "a%20b%2Fc%3Fd%26e%3Df");
        assert_eq!(encode("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(encode("web-app_1.x~"), "web-app_1.x~");
    }

    #[test]
    fn dot_segments_are_refused() {
        for bad in ["", ".", ".."] {
            assert!(segment(bad, "ticket").is_err(), "{bad:?}");
        }
        assert_eq!(segment("...", "ticket").unwrap(), "...");
        assert_eq!(segment("%2e%2e", "ticket").unwrap(), "%252e%252e");
        assert_eq!(segment("a/../b", "ticket").unwrap(), "a%2F..%2Fb");
    }

    #[test]
    fn terminal_controls_from_the_server_are_not_printed() {
        let title = "ok\u{1b}]0;pwned\u{7}\u{9b}2J\r\u{202e}txt.exe\tend\nnext";
        let shown = printable(title);
        assert_eq!(shown, "ok\u{FFFD}]0;pwned\u{FFFD}\u{FFFD}2J\u{FFFD}\u{FFFD}txt.exe\tend\nnext");
        let json = json_text(&serde_json::to_string(&serde_json::json!({ "title": title })).unwrap());
        assert!(!json.chars().any(unsafe_char), "{json:?}");
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["title"], title, "the JSON still holds the same value");
    }

    #[test]
    fn long_first_lines_are_cut() {
        assert_eq!(one_line("abcdef\nsecond", 4), "abc…");
        assert_eq!(one_line("ab", 4), "ab");
    }
}
